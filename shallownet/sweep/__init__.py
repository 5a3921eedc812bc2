"""Many GD runs at once: the exact (U, V) engine, the sweep grid, its figures and its distributed split.

Modules: kernel (numba SIMD engine), torch_paths (CUDA recursion and the [N, d] cross-check), engine
(chunked simulate() over the backends), grid (config schema and the grid), results (per-run records),
figures (Figure 3 and the sharpness panel), distributed (torch.distributed split), runner (a sweep).
"""

from shallownet.sweep.engine import BACKENDS, CONVERGED, DIVERGED, MAX_STEPS, OUTCOMES, Runs, StopRule, simulate

__all__ = ["BACKENDS", "CONVERGED", "DIVERGED", "MAX_STEPS", "OUTCOMES", "Runs", "StopRule", "simulate"]
