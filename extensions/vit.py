"""A small Vision Transformer (`model.kind=vit`) on the transformer kind's blocks (extensions/transformer.py).

    images [N, C, H, W] -> patches (Conv2d, kernel = stride = model.patch) -> tokens [N, (H/p)(W/p), d_model]
    + positions -> layers x Block (bidirectional attention) -> LayerNorm -> mean over tokens -> Linear out

Dosovitskiy et al.'s layout with the class token replaced by the mean over tokens (one fewer parameter
vector, the same for the curvature). Attention and LayerNorm are the transformer kind's written-out ones, so
both HVP methods and third-order products work through it (that module's docstring says why). Digits'
8x8 images with patch 2 give 16 tokens of 4 pixels each. Initialisation: PyTorch's defaults (learned
positions N(0, 1)) drawn from model.seed inside torch.random.fork_rng; parameters in the data's dtype.
"""

from typing import Any

import torch
from torch import nn

from extensions.arch_kinds import ViTConfig
from extensions.real_kinds import model_section
from extensions.real_models import _image_shape, init_scaled, num_outputs
from extensions.transformer import Block, LayerNorm, sinusoidal
from shallownet.checks import require
from shallownet.registry import FullBatchData


class ViT(nn.Module):
    def __init__(self, image: tuple[int, int, int], patch: int, outputs: int, *, layers: int, d_model: int,
                 heads: int, mlp_width: int, positions: str = "learned", layer_norm: bool = True,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        c, h, w = image
        tokens = (h // patch) * (w // patch)
        self.patch = nn.Conv2d(c, d_model, patch, stride=patch, dtype=dtype)
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(tokens, d_model, dtype=dtype))
        else:  # a constant: a buffer outside the Hessian's parameters
            self.register_buffer("positions", sinusoidal(tokens, d_model, dtype), persistent=False)
        self.blocks = nn.Sequential(*(Block(d_model, heads, mlp_width, layer_norm, dtype, causal=False)
                                      for _ in range(layers)))
        self.norm = LayerNorm(d_model, dtype=dtype) if layer_norm else nn.Identity()
        self.out = nn.Linear(d_model, outputs, dtype=dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.patch(images).flatten(2).transpose(1, 2) + self.positions
        return self.out(self.norm(self.blocks(h)).mean(dim=1))


def build_vit(cfg: Any, data: FullBatchData) -> nn.Module:
    ViTConfig.validate(cfg)  # also when called directly, not through a config
    m = model_section(cfg)
    image = _image_shape(data, "vit")
    p = int(m.patch)
    require(image[1] % p == 0 and image[2] % p == 0, "model.patch",
            f"a divisor of the images' height and width {image[1]}x{image[2]}", m.patch)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(m.seed)
        model = ViT(image, p, num_outputs(m, data), layers=m.layers, d_model=m.d_model, heads=m.heads,
                    mlp_width=m.mlp_width, positions=m.positions, layer_norm=bool(m.layer_norm),
                    dtype=torch.as_tensor(data.x).dtype)
    return init_scaled(model, m)
