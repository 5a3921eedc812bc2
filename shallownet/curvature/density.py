"""The Hessian's spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019; PyHessian's density).

    estimate = density(op, n_vectors=10, steps=80)   # op: a HessianOperator (or any hvp with dim/dtype/device)
    grid, values = estimate.smoothed(sigma=0.1)      # Gaussian-smoothed density, integrates to 1
    estimate.moment(2)                               # ~ tr(H^2) / dim

For a unit start vector v, `steps` Lanczos steps give a tridiagonal T whose eigenvalues (nodes) and squared
first eigenvector components (weights) are the Gauss quadrature rule of the spectral measure
mu_v = sum_i (v . u_i)^2 delta(lambda_i): sum_j w_j f(theta_j) = v^T f(H) v exactly for every polynomial f of
degree < 2 steps. Averaged over random v with E[v v^T] = I / dim (Rademacher signs / sqrt(dim)), mu_v averages
to the spectral density (1 / dim) sum_i delta(lambda_i). Lanczos keeps the whole basis and reorthogonalises
fully (memory: steps vectors of length dim), so the rule is exact up to round-off, not a ghost-ridden one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shallownet.curvature.eigen import Hvp


@dataclass(frozen=True, repr=False)
class DensityEstimate:
    nodes: torch.Tensor  # (n_vectors, steps) Ritz values of each run (float64, CPU); fewer on breakdown: NaN-padded
    weights: torch.Tensor  # (n_vectors, steps) their quadrature weights, each row sums to 1 (0 where padded)
    n_hvp: int

    def __repr__(self) -> str:
        return (f"DensityEstimate(n_vectors={len(self.nodes)}, steps={self.nodes.shape[1]}, "
                f"range=[{self.low:.4g}, {self.high:.4g}], n_hvp={self.n_hvp})")

    @property
    def low(self) -> float:
        return float(self.nodes.nan_to_num(nan=math.inf).min())

    @property
    def high(self) -> float:
        return float(self.nodes.nan_to_num(nan=-math.inf).max())

    def moment(self, k: int) -> float:
        """The k-th moment of the estimated density, ~ tr(H^k) / dim (exact per vector for k < 2 steps)."""
        return float((self.weights * self.nodes.nan_to_num(nan=0.0) ** k).sum(dim=1).mean())

    def smoothed(self, sigma: float | None = None, grid: torch.Tensor | None = None,
                 points: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid, density) of the nodes convolved with a Gaussian of width sigma (default: 1% of the range),
        on `grid` (default: `points` points from low - 5 sigma to high + 5 sigma)."""
        spread = max(self.high - self.low, 1e-12)
        sigma = sigma if sigma is not None else 0.01 * spread
        if grid is None:
            grid = torch.linspace(self.low - 5 * sigma, self.high + 5 * sigma, points, dtype=torch.float64)
        nodes, weights = self.nodes.nan_to_num(nan=0.0).flatten(), self.weights.flatten() / len(self.nodes)
        kernel = torch.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return grid, kernel @ weights


def density(hvp: Hvp, n_vectors: int = 10, steps: int = 80, *, seed: int = 0) -> DensityEstimate:
    """Stochastic Lanczos quadrature of the spectral density of `hvp` (needs dim, dtype, device) from
    n_vectors Rademacher start vectors and `steps` Lanczos steps each (at most dim): n_vectors x steps HVPs."""
    if n_vectors < 1 or steps < 1:
        raise ValueError(f"n_vectors and steps must be >= 1, got {n_vectors} and {steps}")
    steps = min(steps, hvp.dim)
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.full((n_vectors, steps), float("nan"), dtype=torch.float64)
    weights = torch.zeros(n_vectors, steps, dtype=torch.float64)
    n_hvp = 0
    for i in range(n_vectors):
        signs = torch.randint(0, 2, (hvp.dim,), generator=generator).to(hvp.dtype).mul_(2).sub_(1)
        alpha, beta = _lanczos_tridiagonal(hvp, signs.to(hvp.device) / math.sqrt(hvp.dim), steps)
        n_hvp += len(alpha)
        tridiagonal = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
        theta, vectors = torch.linalg.eigh(tridiagonal)
        nodes[i, : len(alpha)], weights[i, : len(alpha)] = theta, vectors[0] ** 2
    return DensityEstimate(nodes, weights, n_hvp)


def _lanczos_tridiagonal(hvp: Hvp, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) of `steps` Lanczos steps from unit v with full reorthogonalisation (float64, CPU); stops
    early when the Krylov space is invariant (then the rule is exact for every polynomial)."""
    basis = torch.empty(steps, v.numel(), dtype=v.dtype, device=v.device)
    alpha, beta = [], []
    basis[0] = v
    for j in range(steps):
        w = hvp(basis[j])
        alpha.append(float(basis[j] @ w))
        for _ in range(2):  # twice is enough (Gram-Schmidt with one reorthogonalisation)
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        norm = float(torch.linalg.vector_norm(w))
        if j + 1 == steps or norm <= 100 * torch.finfo(v.dtype).eps * max(1.0, max(abs(a) for a in alpha)):
            break
        beta.append(norm)
        basis[j + 1] = w / norm
    return torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)
