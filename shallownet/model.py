"""The two-layer scalar linear network x -> (a.b) x and its initialisation schemes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from shallownet import quantities
from shallownet.builtin_kinds import INIT_SCHEMES


class ScalarLinearNet(nn.Module):
    """Depth-2 linear net with one input, one output and hidden width d: parameters a, b in R^d.

    `phi` is the target product Phi (the minimiser of the data loss): the quantities are measured
    against it.
    """

    # dynamics/imbalance_ratio: Q_k(t)/Q_k(0) on the unit k with the largest |Q_k(0)|. Every Q_i shrinks by
    # the same factor P (theory.md section 3), so this is Q/Q(0), defined also when Q(0) = 0.
    ratios = {"imbalance_ratio": "imbalance_per_unit"}

    def __init__(self, a0: torch.Tensor, b0: torch.Tensor, phi: float = 1.0):
        super().__init__()
        if a0.shape != b0.shape or a0.dim() != 1:
            raise ValueError(f"a0 and b0 must be 1-D of equal length, got {tuple(a0.shape)} and {tuple(b0.shape)}")
        self.a = nn.Parameter(a0.clone())
        self.b = nn.Parameter(b0.clone())
        self.phi = float(phi)

    @property
    def width(self) -> int:
        return self.a.numel()

    def product(self) -> torch.Tensor:
        """The end-to-end scalar m = a.b."""
        return self.a @ self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product() * x

    @torch.no_grad()
    def residual(self) -> torch.Tensor:
        """eps = a.b - phi: what the run's convergence test bounds, before every step."""
        return quantities.residual(self.a, self.b, self.phi)

    @torch.no_grad()
    def quantities(self) -> dict[str, torch.Tensor]:
        """eps, lam, Q, Qn (0-dim) and the Q_i (1-dim) at the current parameters (theory.md section 2)."""
        a, b = self.a, self.b
        return {
            "residual": self.residual(),
            "norm": quantities.norm(a, b),
            "imbalance": quantities.imbalance(a, b),
            "imbalance_norm": quantities.imbalance_norm(a, b),
            "imbalance_per_unit": quantities.imbalance_per_unit(a, b),
        }


def initial_vectors(
    width: int,
    scheme: str = "gaussian",
    scale: float = 1.0,
    seed: int = 0,
    imbalance: float = 0.5,
    a0: Sequence[float] | None = None,
    b0: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (a, b) for a scheme.

    gaussian:   a, b i.i.d. N(0, scale^2 / width), so lam(0) is about 2 scale^2 at any width.
    explicit:   the given vectors a0, b0.
    imbalanced: lam(0) = 2 scale^2 exactly and Q(0) = imbalance * lam(0) (imbalance in (-1, 1)),
                along independent random directions.
    """
    gen = torch.Generator().manual_seed(seed)
    if scheme == "gaussian":
        std = scale / math.sqrt(width)
        return (torch.randn(width, generator=gen, dtype=dtype) * std,
                torch.randn(width, generator=gen, dtype=dtype) * std)
    if scheme == "explicit":
        return torch.tensor(a0, dtype=dtype), torch.tensor(b0, dtype=dtype)
    if scheme == "imbalanced":
        lam0 = 2.0 * scale * scale
        directions = torch.randn(2, width, generator=gen, dtype=dtype)
        directions /= torch.linalg.vector_norm(directions, dim=1, keepdim=True)
        a_len, b_len = math.sqrt(lam0 * (1 + imbalance) / 2), math.sqrt(lam0 * (1 - imbalance) / 2)
        return directions[0] * a_len, directions[1] * b_len
    raise ValueError(f"unknown init scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")
