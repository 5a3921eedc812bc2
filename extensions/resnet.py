"""A CIFAR-style ResNet (He et al. 2016, section 4.2) by name (`model.kind=resnet`), on image data [N, C, H, W].

    conv1 3x3 (width), [bn1], act1 ReLU
    stage1 .. stage<S>: model.depth BasicBlocks each, width * 2^(s-1) channels; the first block of stages
                        2.. halves the image (stride 2) and its shortcut is a 1x1 conv (stride 2) [+ BN]
    pool (global average), flatten, out Linear

    BasicBlock: conv1 3x3, [bn1], act1 ReLU, conv2 3x3, [bn2]; plus the shortcut (identity or projection);
                then act2 ReLU.

ResNet-20 of the paper is depth 3, width 16, stages 3. With model.batch_norm the convolutions have no bias
and BatchNorm normalises with the statistics of the batch it is given, as vgg's (extensions/real_models.py):
the runs are full-batch, so these are the statistics of the whole training set and the loss is one fixed
function of the parameters, the one the curvature is measured on. That is also why such a net refuses
train.chunk_size (each chunk would be normalised with its own statistics, a different loss) and more than
one process (each would normalise with its shard's); evaluation (test loss, accuracy) runs in train mode too,
on the test set's own statistics.

Initialisation: PyTorch's defaults drawn from model.seed inside torch.random.fork_rng; the data's dtype.
"""

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from extensions.arch_kinds import ResNetConfig
from extensions.real_kinds import model_section
from extensions.real_models import _image_shape, _seeded, init_scaled, num_outputs
from shallownet.registry import FullBatchData


def _conv(c_in: int, c_out: int, kernel: int, stride: int, batch_norm: bool, dtype: torch.dtype) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=not batch_norm, dtype=dtype)


def _norm(channels: int, batch_norm: bool, dtype: torch.dtype) -> nn.Module:
    return nn.BatchNorm2d(channels, dtype=dtype) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool, dtype: torch.dtype):
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, c_out, 3, stride, batch_norm, dtype), _norm(c_out, batch_norm, dtype)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = _conv(c_out, c_out, 3, 1, batch_norm, dtype), _norm(c_out, batch_norm, dtype)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(OrderedDict(
            conv=_conv(c_in, c_out, 1, stride, batch_norm, dtype), bn=_norm(c_out, batch_norm, dtype)))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(residual + self.shortcut(x))


def build_resnet_net(image: tuple[int, int, int], outputs: int, depth: int = 3, width: int = 16, stages: int = 3,
                     batch_norm: bool = False, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The net of the module docstring; without batch_norm the bn modules are nn.Identity."""
    def make() -> nn.Sequential:
        named: list[tuple[str, nn.Module]] = [("conv1", _conv(image[0], width, 3, 1, batch_norm, dtype)),
                                              ("bn1", _norm(width, batch_norm, dtype)), ("act1", nn.ReLU())]
        c = width
        for s in range(1, stages + 1):
            c_out = width * 2 ** (s - 1)
            blocks = [(f"block{b}", BasicBlock(c if b == 1 else c_out, c_out, 2 if s > 1 and b == 1 else 1,
                                               batch_norm, dtype)) for b in range(1, depth + 1)]
            named.append((f"stage{s}", nn.Sequential(OrderedDict(blocks))))
            c = c_out
        named += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                  ("out", nn.Linear(c, outputs, dtype=dtype))]
        return nn.Sequential(OrderedDict(named))

    return _seeded(seed, make)


def build_resnet(cfg: Any, data: FullBatchData) -> nn.Module:
    ResNetConfig.validate(cfg)  # also when called directly, not through a config
    m = model_section(cfg)
    return init_scaled(build_resnet_net(_image_shape(data, "resnet"), num_outputs(m, data), m.depth, m.width,
                                        m.stages, bool(m.batch_norm), seed=m.seed, dtype=data.x.dtype), m)
