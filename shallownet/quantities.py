"""The quantities the paper tracks, computed from a model's current parameters (torch, any dtype).

Pure functions of tensors: the callbacks log these and the tests compare them with shallownet.theory.
"""

from __future__ import annotations

import torch
from torch import nn


def residual(a: torch.Tensor, b: torch.Tensor, phi: float) -> torch.Tensor:
    """eps = a.b - phi (model minus target)."""
    return a @ b - phi


def norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """lam = |a|^2 + |b|^2."""
    return a @ a + b @ b


def imbalance_per_unit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Q_i = a_i^2 - b_i^2, one per hidden unit."""
    return a * a - b * b


def imbalance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Q = sum_i Q_i = |a|^2 - |b|^2 (signed)."""
    return imbalance_per_unit(a, b).sum()


def imbalance_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Qn = |a + b| |a - b|, the nuclear norm of a a^T - b b^T."""
    return torch.linalg.vector_norm(a + b) * torch.linalg.vector_norm(a - b)


def shallow_state(a: torch.Tensor, b: torch.Tensor, phi: float) -> dict[str, float]:
    """eps, lam, Q and Qn of a point, as Python floats."""
    with torch.no_grad():
        eps = residual(a, b, phi)
        return {
            "residual": float(eps),
            "norm": float(norm(a, b)),
            "imbalance": float(imbalance(a, b)),
            "imbalance_norm": float(imbalance_norm(a, b)),
        }


def linear_chain_imbalances(layers: list[nn.Linear]) -> list[torch.Tensor]:
    """Frobenius norms of D_l = W_{l+1}^T W_{l+1} - W_l W_l^T between consecutive linear layers.

    Gradient flow conserves every D_l (theory.md section 8): these generalise Q to deeper nets.
    """
    with torch.no_grad():
        return [
            torch.linalg.matrix_norm(nxt.weight.T @ nxt.weight - cur.weight @ cur.weight.T)
            for cur, nxt in zip(layers[:-1], layers[1:], strict=True)
        ]
