"""Top eigenpairs along a training trajectory, each solve warm-started from the previous solutions."""

from __future__ import annotations

from collections.abc import Callable

import torch

from shallownet.curvature.eigen import EigenResult, Hvp, lanczos


class EigenTracker:
    """Repeated `lanczos` solves, started from the eigenvectors of the last `depth` solves.

    Between two measurements the top eigenvector moves a little; the span of the last few solutions
    holds its polynomial extrapolation, so Rayleigh-Ritz on it starts Lanczos from a prediction. Each
    start vector costs one HVP. On an earlier digits MLP run (residual 1e-6, lr 0.5), HVPs per solve for depth
    1 / 2 / 3 were 6.7 / 5.7 / 4.6 when solving every 10 GD steps. On ReLU MLPs whose top eigenvalues
    crowd together (gap ~4% of the value) depth matters little, because what is left after the best start
    is removed at the Krylov rate that the gap sets: on the 64-200-200-10 MLP at lr 0.1 depth 3 takes 12.7
    HVPs every step and 14.6 every 10 steps at residual 1e-6, 4.2 and 6.0 at residual 1e-3 (sharpness still
    within 1e-5 of a residual-1e-11 solve; `python benchmarks/bench_train.py`, docs/benchmarks.md), and depth 1
    did about as well in an exploratory run. With k > 1 the start block
    holds depth * k rows, so repeated top eigenvalues are found again as often as they occur (see
    `lanczos`).
    """

    def __init__(self, k: int = 1, tol: float = 1e-6, max_iter: int = 1000, depth: int = 3):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.k, self.tol, self.max_iter, self.depth = k, tol, max_iter, depth
        self.previous: list[torch.Tensor] = []  # (k, dim) eigenvector blocks, newest first

    def solve(self, hvp: Hvp, stop: Callable[[], bool] | None = None) -> EigenResult:
        """One warm-started solve; `stop` as in lanczos (a stopped solve leaves the warm start as it was)."""
        start = torch.cat(self.previous) if self.previous else None
        result = lanczos(hvp, start, k=self.k, tol=self.tol, max_iter=self.max_iter, stop=stop)
        if bool(torch.isfinite(result.vectors).all()):
            self.previous = [result.vectors.detach()] + self.previous[: self.depth - 1]
        return result
