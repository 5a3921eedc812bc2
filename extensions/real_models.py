"""Real networks by name (`model.kind`): a fully connected net, a small CNN and a small VGG.

The model kinds `mlp`, `cnn`, `vgg` are registered by extensions.real_kinds (with their schemas), which
names the builders at the end of this module. Every model is a flat nn.Sequential with named layers (fc1, act1,
conv1, pool1, conv2_1, bn2_1, ..., out), so extensions.balance finds its hidden units and its tags
read `balance/mean_abs_fc1` and so on. Data come as images [N, C, H, W]; the MLP flattens them itself
(its first layer is nn.Flatten), the conv nets take them as they are.

All of them: PyTorch's default initialisation drawn from `model.seed` inside torch.random.fork_rng (the
global RNG is left as it was), every parameter then times `model.init_scale`, created in the data's
dtype, loss half_sum_mse by default (Cohen et al.'s 1/2 sum over classes / N), converged when the loss is
below train.tol. The number of outputs is `model.num_outputs`, or (null) the number of classes in the labels
(largest label + 1).
"""

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from extensions.mlp import ACTIVATIONS, mlp
from extensions.real_kinds import CNNConfig, MLPConfig, VGGConfig, model_section
from shallownet.checks import ConfigError
from shallownet.registry import FullBatchData

# --- from the data -----------------------------------------------------------------------------------

def num_outputs(section: Any, data: FullBatchData) -> int:
    """model.num_outputs, or the number of classes in the labels (float targets [N, k]: k)."""
    if section.num_outputs is not None:
        return int(section.num_outputs)
    y = torch.as_tensor(data.y)
    if y.is_floating_point():
        return int(y.shape[-1]) if y.ndim == 2 else 1
    labels = [y] + ([torch.as_tensor(data.y_test)] if data.y_test is not None else [])
    return int(max(int(t.max()) for t in labels if t.numel())) + 1


def _image_shape(data: FullBatchData, kind: str) -> tuple[int, int, int]:
    shape = tuple(data.x.shape[1:])
    if len(shape) != 3:
        raise ConfigError(f"config key 'model.kind' {kind} needs image data [N, C, H, W]; the data give "
                          f"examples of shape {list(shape)} (choose model.kind mlp)")
    return shape  # type: ignore[return-value]


def init_scaled(model: nn.Module, section: Any) -> nn.Module:
    """Every parameter of the model's own initialisation times model.init_scale (buffers untouched): the
    initial scale axis of a sweep, so a sweep cell reruns alone as one `shallownet train`."""
    scale = float(section.init_scale)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model


def _seeded(seed: int, make) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        return make()


# --- builders ----------------------------------------------------------------------------------------

def build_mlp_net(in_features: int, widths: list[int], outputs: int, activation: str = "relu", *, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """flatten, fc1, act1, ..., fc<L>, act<L>, out: extensions.mlp.mlp's layers (same init for the same
    seed) after an nn.Flatten, with names."""
    layers = list(mlp([in_features, *widths, outputs], activation, seed=seed, dtype=dtype))
    named: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i, layer in enumerate(layers[:-1]):
        named.append((f"fc{i // 2 + 1}" if i % 2 == 0 else f"act{i // 2 + 1}", layer))
    named.append(("out", layers[-1]))
    return nn.Sequential(OrderedDict(named))


def build_cnn_net(image: tuple[int, int, int], channels: list[int], outputs: int, activation: str = "relu",
                  kernel_size: int = 3, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """conv<i> (kernel_size, 'same' padding), act<i>, pool<i> (2x2 max, while the image is >= 2 pixels),
    for each entry of channels; then flatten and a Linear out."""
    act = ACTIVATIONS[activation]

    def make() -> nn.Sequential:
        named: list[tuple[str, nn.Module]] = []
        c, h, w = image
        for i, width in enumerate(channels, start=1):
            named += [(f"conv{i}", nn.Conv2d(c, width, kernel_size, padding=kernel_size // 2, dtype=dtype)),
                      (f"act{i}", act())]
            c = width
            if h >= 2 and w >= 2:
                named.append((f"pool{i}", nn.MaxPool2d(2)))
                h, w = h // 2, w // 2
        named += [("flatten", nn.Flatten()), ("out", nn.Linear(c * h * w, outputs, dtype=dtype))]
        return nn.Sequential(OrderedDict(named))

    return _seeded(seed, make)


def build_vgg_net(image: tuple[int, int, int], channels: list[int], outputs: int, convs_per_stage: int = 2,
                  hidden: int = 128, batch_norm: bool = False, *, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Stages s = 1..len(channels): convs_per_stage x (conv<s>_<i> 3x3, [bn<s>_<i>], act<s>_<i> ReLU), then
    pool<s> (2x2 max, while the image is >= 2 pixels); flatten, [fc1, act_fc1 (ReLU)], out.

    With batch_norm the convolutions have no bias (BatchNorm's shift replaces it)."""
    def make() -> nn.Sequential:
        named: list[tuple[str, nn.Module]] = []
        c, h, w = image
        for s, width in enumerate(channels, start=1):
            for i in range(1, convs_per_stage + 1):
                named.append((f"conv{s}_{i}", nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm, dtype=dtype)))
                if batch_norm:
                    named.append((f"bn{s}_{i}", nn.BatchNorm2d(width, dtype=dtype)))
                named.append((f"act{s}_{i}", nn.ReLU()))
                c = width
            if h >= 2 and w >= 2:
                named.append((f"pool{s}", nn.MaxPool2d(2)))
                h, w = h // 2, w // 2
        named.append(("flatten", nn.Flatten()))
        features = c * h * w
        if hidden:
            named += [("fc1", nn.Linear(features, hidden, dtype=dtype)), ("act_fc1", nn.ReLU())]
            features = hidden
        named.append(("out", nn.Linear(features, outputs, dtype=dtype)))
        return nn.Sequential(OrderedDict(named))

    return _seeded(seed, make)


# --- builders (registered by extensions.real_kinds) -----------------------------------------------

def build_mlp(cfg: Any, data: FullBatchData) -> nn.Module:
    MLPConfig.validate(cfg)  # also when called directly, not through a config
    m = model_section(cfg)
    widths = [int(w) for w in m.widths]
    in_features = math.prod(data.x.shape[1:])
    return init_scaled(build_mlp_net(in_features, widths, num_outputs(m, data), m.activation, seed=m.seed,
                                     dtype=data.x.dtype), m)


def build_cnn(cfg: Any, data: FullBatchData) -> nn.Module:
    CNNConfig.validate(cfg)  # also when called directly, not through a config
    m = model_section(cfg)
    channels = [int(c) for c in m.channels]
    return init_scaled(build_cnn_net(_image_shape(data, "cnn"), channels, num_outputs(m, data), m.activation,
                                     m.kernel_size, seed=m.seed, dtype=data.x.dtype), m)


def build_vgg(cfg: Any, data: FullBatchData) -> nn.Module:
    VGGConfig.validate(cfg)  # also when called directly, not through a config
    m = model_section(cfg)
    channels = [int(c) for c in m.channels]
    return init_scaled(build_vgg_net(_image_shape(data, "vgg"), channels, num_outputs(m, data), m.convs_per_stage,
                                     m.hidden, bool(m.batch_norm), seed=m.seed, dtype=data.x.dtype), m)
