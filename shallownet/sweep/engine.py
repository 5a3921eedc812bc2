"""Many GD runs of the shallow net at once, in chunks, on one of three backends.

    numba    the exact (U, V) recursion on the CPU, SIMD over blocks of runs (kernel.py); the default
    torch    the same recursion as torch tensors, for CUDA (torch_paths.py)
    cuda     the same recursion as one fused numba.cuda kernel, a run's state in registers (cuda_kernels.py)
    batched  plain GD on [N, d] tensors of (a, b): slow, the cross-check of the other two

Every run stops on its own by the one StopRule (shallownet.stop): converged once |eps_k| <= tol (tested
before step k, so `steps` is the first such k), diverged once lam_k > divergence_norm or non-finite,
otherwise after max_steps steps. The kernels test those conditions in their own code; the outcome is
then read off each run's final state with StopRule.classify, the function every other path uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shallownet.stop import OUTCOMES as ALL_OUTCOMES
from shallownet.stop import StopRule

BACKENDS = ("numba", "torch", "batched", "cuda")

OUTCOMES = ALL_OUTCOMES[:3]  # a sweep's runs end converged, diverged or at max_steps
CONVERGED, DIVERGED, MAX_STEPS = range(3)  # the codes StopRule.classify gives them

# Working memory per run while a chunk is simulated (state, inputs and temporaries, float64), for
# sizing chunks to a memory budget; the batched path also holds ~10 [d]-vectors per run (a, b and
# the temporaries of one step).
_BYTES_PER_RUN = {"numba": 80, "torch": 200, "batched": 200, "cuda": 80}
_BYTES_PER_RUN_AND_UNIT = 80


class StepScaleGrid:
    """Runs over step size x initial scale (the fields eta and scale of a dataclass below), numbered
    row-major: run (i, j) has flat index i * len(scale) + j."""

    eta: np.ndarray
    scale: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.eta.size, self.scale.size

    @property
    def size(self) -> int:
        return self.eta.size * self.scale.size

    def runs(self, flat: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(eta, init_index) of the runs with the given flat indices (default: all, in order)."""
        flat = np.arange(self.size) if flat is None else np.asarray(flat)
        return self.eta[flat // self.scale.size], flat % self.scale.size


@dataclass
class Runs:
    """Raw results of N runs (1-D float64 arrays, steps int64): the state where each run stopped."""

    residual: np.ndarray  # eps at the end
    norm: np.ndarray  # lam at the end
    factor: np.ndarray  # P = prod over the steps taken of (1 - eta^2 eps_t^2) = Q(T)/Q(0)
    max_step: np.ndarray  # max over the steps taken of eta |eps_t|
    steps: np.ndarray  # steps taken

    def outcome(self, rule: StopRule) -> np.ndarray:
        """Outcome codes (int8), read off the final state with the one stop rule."""
        return rule.classify(self.residual, self.norm, self.steps)


def bytes_per_run(backend: str, width: int) -> int:
    """Working memory one run needs while its chunk is simulated."""
    return _BYTES_PER_RUN[backend] + (_BYTES_PER_RUN_AND_UNIT * width if backend == "batched" else 0)


def simulate(eta: np.ndarray, init_index: np.ndarray, a0: np.ndarray, b0: np.ndarray, phi: float,
             rule: StopRule, backend: str = "numba", device: str = "cpu", chunk_size: int = 65536,
             progress: Callable[[int], None] | None = None) -> Runs:
    """Run i does GD with step eta[i] from (a0[init_index[i]], b0[init_index[i]]).

    a0, b0: [S, d] initial points shared by many runs (the (U, V) backends only need |a0 +- b0|^2).
    Runs are simulated chunk_size at a time; `progress(n)` is called after each chunk of n runs.
    """
    eta = np.asarray(eta, dtype=np.float64)
    init_index = np.asarray(init_index)
    a0, b0 = np.asarray(a0, dtype=np.float64), np.asarray(b0, dtype=np.float64)
    u_init = ((a0 + b0) ** 2).sum(axis=1)
    v_init = ((a0 - b0) ** 2).sum(axis=1)
    parts = []
    for start in range(0, eta.size, chunk_size):
        rates, index = eta[start:start + chunk_size], init_index[start:start + chunk_size]
        if backend == "batched":
            parts.append(_batched(a0[index], b0[index], rates, phi, rule, device))
        else:
            parts.append(_recursion(u_init[index], v_init[index], rates, phi, rule, backend, device))
        if progress is not None:
            progress(rates.size)
    if not parts:
        empty = np.zeros(0)
        return Runs(empty, empty, empty, empty, np.zeros(0, dtype=np.int64))
    return Runs(*(np.concatenate(field) for field in zip(*parts, strict=True)))


def _recursion(u0, v0, eta, phi, rule, backend, device):
    args = (u0, v0, eta, phi, rule.tol, rule.divergence_norm, rule.max_steps)
    if backend == "numba":
        from shallownet.sweep.kernel import run_uv_numba

        u, v, factor, max_step, steps = run_uv_numba(*args)
    elif backend == "cuda":
        from shallownet.sweep.cuda_kernels import run_uv_cuda

        u, v, factor, max_step, steps = run_uv_cuda(*args)
    else:
        from shallownet.sweep.torch_paths import run_uv_torch

        u, v, factor, max_step, steps = (t.cpu().numpy() for t in run_uv_torch(*args, device=device))
    # Same expressions as the stop test inside the loop, so outcome() classifies exactly as it did.
    return (u - v) * 0.25 - phi, (u + v) * 0.5, factor, max_step, steps


def _batched(a0, b0, eta, phi, rule, device):
    from shallownet.sweep.torch_paths import run_ab_torch

    out = run_ab_torch(a0, b0, eta, phi, rule.tol, rule.divergence_norm, rule.max_steps, device=device)
    return tuple(t.cpu().numpy() for t in out)
