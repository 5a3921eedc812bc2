"""The model itself, imported only when a run is built."""

import torch
from torch import nn


class Diagonal(nn.Module):
    """f(x) = (|u|^2 - |v|^2) x: a diagonal linear net with a sign, on shallownet's `points` data."""

    def __init__(self, width: int, scale: float, seed: int, dtype: torch.dtype):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(scale * torch.randn(width, generator=gen, dtype=dtype))
        self.v = nn.Parameter(scale * torch.randn(width, generator=gen, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.u.square().sum() - self.v.square().sum()) * x.reshape(-1)

    def quantities(self) -> dict[str, torch.Tensor]:  # logged by the DynamicsMonitor as dynamics/<name>
        return {"slope": self.u.square().sum() - self.v.square().sum(), "u_norm": self.u.square().sum(),
                "v_norm": self.v.square().sum(), "u": self.u.detach(), "v": self.v.detach()}


def build(cfg, data) -> Diagonal:
    m = cfg.model
    return Diagonal(m.width, m.scale, m.seed, dtype=data.x.dtype)
