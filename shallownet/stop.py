"""The one stop rule every run uses: the Lightning module, figure1's paths and the sweep engines.

Outcomes, in the order they win when several hold:

    diverged     a non-finite error or norm
    converged    error <= tol (error: |eps|, the loss or the gradient norm, as the run chooses)
    diverged     norm > divergence_norm (a finite runaway: only when not converged)
    max_time     flow time >= max_time
    max_steps    steps >= max_steps
    interrupted  a stop was requested (SIGINT / SIGTERM) while none of the above holds

A state that meets the tolerance is converged even with a huge norm: it is a minimum, the norm threshold
only tells a runaway from a slow run. `norm` is the squared parameter norm (lambda for the shallow net).
The numba and CUDA sweep kernels test the same conditions in their own code; tests/test_stop.py feeds
the edge cases to every implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OUTCOMES = ("converged", "diverged", "max_steps", "max_time", "interrupted")  # code = index
CONVERGED, DIVERGED, MAX_STEPS, MAX_TIME, INTERRUPTED = OUTCOMES
GO_ON = -1


@dataclass(frozen=True)
class StopRule:
    tol: float
    divergence_norm: float
    max_steps: int
    max_time: float = math.inf

    def classify(self, error, norm, steps=0, time=0.0, interrupted=False) -> np.ndarray:
        """Outcome codes (int8; GO_ON = -1 where the run goes on), elementwise over arrays."""
        error, norm = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(norm, dtype=np.float64)
        finite = np.isfinite(error) & np.isfinite(norm)
        converged = finite & (error <= self.tol)
        diverged = ~finite | (~converged & ~(norm <= self.divergence_norm))
        codes = np.select(
            [diverged, converged, np.asarray(time) >= self.max_time, np.asarray(steps) >= self.max_steps,
             np.asarray(interrupted, dtype=bool)],
            [OUTCOMES.index(DIVERGED), OUTCOMES.index(CONVERGED), OUTCOMES.index(MAX_TIME),
             OUTCOMES.index(MAX_STEPS), OUTCOMES.index(INTERRUPTED)],
            default=GO_ON)
        return codes.astype(np.int8)

    def judge(self, error: float, norm: float, steps: int = 0, time: float = 0.0,
              interrupted: bool = False) -> str | None:
        """The outcome of one state, or None while the run goes on: classify's table for one state, in
        plain Python (it runs before every step; tests/test_stop.py checks that the two agree)."""
        error = abs(error)
        if not (math.isfinite(error) and math.isfinite(norm)):
            return DIVERGED
        if error <= self.tol:
            return CONVERGED
        if not norm <= self.divergence_norm:
            return DIVERGED
        if time >= self.max_time:
            return MAX_TIME
        if steps >= self.max_steps:
            return MAX_STEPS
        return INTERRUPTED if interrupted else None
