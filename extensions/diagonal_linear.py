"""The diagonal linear net f(x) = sum_j a_j b_j x_j (model.kind=diagonal_linear).

Under gradient flow every coordinate's imbalance a_j^2 - b_j^2 is conserved (the layers' imbalance of a
two-layer linear net, one coordinate at a time); GD and SGD move it, and how much is the question.
"""

from __future__ import annotations

import torch
from torch import nn

from shallownet.checks import ConfigError


class DiagonalLinearNet(nn.Module):
    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.a * self.b)

    @torch.no_grad()
    def quantities(self) -> dict[str, torch.Tensor]:
        """norm |a|^2 + |b|^2, the per-coordinate imbalances a_j^2 - b_j^2 (1-dim) and their norm, the
        effective weights' norm |a * b|."""
        a, b = self.a, self.b
        imbalances = a.square() - b.square()
        return {"norm": a.square().sum() + b.square().sum(), "imbalances": imbalances,
                "imbalance_norm": imbalances.norm(), "weights_norm": (a * b).norm()}


def build_diagonal_linear(cfg, data) -> DiagonalLinearNet:
    if data.x.dim() != 2 or data.y.shape != data.x.shape[:1]:
        raise ConfigError(f"config key 'model.kind': diagonal_linear needs inputs (n, d) and targets (n,), got "
                          f"{tuple(data.x.shape)} and {tuple(data.y.shape)}")
    generator = torch.Generator().manual_seed(cfg.model.seed)
    a, b = (cfg.model.scale * torch.randn(data.x.shape[1], generator=generator, dtype=torch.float64)
            for _ in range(2))
    return DiagonalLinearNet(a.to(data.x.dtype), b.to(data.x.dtype))
