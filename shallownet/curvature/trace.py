"""Hutchinson's stochastic estimator of the Hessian trace, with its standard error."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shallownet.curvature.eigen import Hvp


@dataclass(frozen=True, repr=False)
class TraceEstimate:
    estimate: float  # mean of v^T H v over Rademacher v: unbiased for tr H
    stderr: float  # sample standard deviation / sqrt(n_samples)
    n_hvp: int
    samples: torch.Tensor  # the individual v^T H v, float64 on the CPU

    def __repr__(self) -> str:
        return f"TraceEstimate(estimate={self.estimate:.6g}, stderr={self.stderr:.2g}, n_hvp={self.n_hvp})"


def hutchinson(hvp: Hvp, n_samples: int = 100, *, seed: int = 0) -> TraceEstimate:
    """tr H from n_samples HVPs with Rademacher vectors; `hvp` needs dim, dtype and device attributes.

    Var(v^T H v) = 2 sum_{i != j} H_ij^2, so the estimate is exact for a diagonal H and its error is
    about stderr otherwise (normal approximation, n_samples >= 30 or so).
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 to state an error, got {n_samples}")
    generator = torch.Generator().manual_seed(seed)
    samples = torch.empty(n_samples, dtype=torch.float64)
    for i in range(n_samples):
        signs = torch.randint(0, 2, (hvp.dim,), generator=generator).to(hvp.dtype).mul_(2).sub_(1)
        signs = signs.to(hvp.device)
        samples[i] = float(signs @ hvp(signs))
    return TraceEstimate(float(samples.mean()), float(samples.std()) / math.sqrt(n_samples), n_samples, samples)
