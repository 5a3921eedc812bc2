"""The quantities the paper tracks, computed from a model's current parameters (torch, any dtype).

Pure functions of tensors: the callbacks log these and the tests compare them with shallownet.theory.
"""

from __future__ import annotations

import torch


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
