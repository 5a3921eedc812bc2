"""Many GD runs of depth-L scalar chains f = w_1 ... w_L at once: grid, engine, per-run records, summary.

The chain analogue of the shallow sweep (engine.py, results.py), for theory.md section 8.2: loss
1/2 (p - Phi)^2 with p = prod_l w_l, GD step w_l' = w_l - eta eps prod_(k != l) w_k. Backends:

    numba   the CPU kernel (chain_kernel.py), SIMD over blocks of runs; the default
    torch   the same arithmetic as torch tensors (float64; CPU or CUDA, replayed as a CUDA graph there)
    cuda    one fused numba.cuda kernel, one thread per run, state in registers (cuda_kernels.py)

All three perform the kernel's operations in the kernel's order (chain_kernel.py's docstring), so they
give the same bits. Every run stops by the shallow engine's rule: converged once |eps_k| <= tol (tested
before step k, so `steps` is the first such k), diverged once sum_l w_l^2 > divergence_norm or
non-finite, otherwise after max_steps; the outcome is read off the final state with the shallow engine's
own `Runs.outcome`, so the codes (CONVERGED, DIVERGED, MAX_STEPS) and their precedence are the same.

Imbalance: the factor P recorded per run is the product over the steps taken of 1 - (eta eps_t m_t)^2,
m_t = w_2 ... w_(L-1) (1 for L = 2): exactly the factor by which the end-to-end pairwise imbalance
w_1^2 - w_L^2 changes (theory.md 8.2), so P = (w_1^2 - w_L^2)(T) / (w_1^2 - w_L^2)(0) without the
cancellation of taking that ratio from the states. At L = 2 it is the shallow engine's P.

Initialisation schemes (chain_initial_weights), for initial scale s and depth L:

    imbalanced  w_l = s sqrt(1 + q r_l), r_l = 1 - 2 (l - 1)/(L - 1) (from +1 at the input layer to -1 at
                the output layer; q = `imbalance` in (-1, 1)). Then sum_l w_l^2 = L s^2 and
                w_1^2 - w_L^2 = 2 q s^2; at L = 2 this is the shallow 'imbalanced' init at width 1:
                (a0, b0) = (s sqrt(1 + q), s sqrt(1 - q)).
    random      the same with r_l i.i.d. uniform(-1, 1) from numpy's default_rng(seed), one pattern
                shared by every scale.
    balanced    w_l = s for every l (GD keeps it balanced up to round-off).

Every scheme gives positive weights, so p(0) > 0 has the sign of a positive Phi.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shallownet import deep_theory
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS, OUTCOMES, Runs, StepScaleGrid

CHAIN_BACKENDS = ("numba", "torch", "cuda")
CHAIN_INIT_SCHEMES = ("imbalanced", "random", "balanced")
CHECK_EVERY = 256  # torch path: steps between asking the device whether every run has stopped


# --- initial points and the grid ----------------------------------------------------------------------

def chain_initial_weights(scale, depth: int, scheme: str = "imbalanced", imbalance: float = 0.5,
                          seed: int = 0) -> np.ndarray:
    """Initial weights [S, L] for the scales `scale` [S] (see the module docstring for the schemes)."""
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    if not -1.0 < imbalance < 1.0:
        raise ValueError(f"imbalance must be in (-1, 1), got {imbalance}")
    if scheme == "balanced":
        pattern = np.ones(depth)
    elif scheme == "imbalanced":
        pattern = np.sqrt(1.0 + imbalance * np.linspace(1.0, -1.0, depth))
    elif scheme == "random":
        pattern = np.sqrt(1.0 + imbalance * np.random.default_rng(seed).uniform(-1.0, 1.0, depth))
    else:
        raise ValueError(f"unknown chain init scheme {scheme!r}; allowed: {', '.join(CHAIN_INIT_SCHEMES)}")
    return scale[:, None] * pattern[None, :]


@dataclass(frozen=True)
class ChainGrid(StepScaleGrid):
    """The runs of a chain sweep: run (i, j) has step eta[i] and starts from w0[j] (of scale[j]).

    Runs are numbered row-major, flat index i * len(scale) + j (as the shallow sweep's Grid).
    `rule` is a shallownet StopRule (anything with tol, divergence_norm, max_steps and the shallow
    engine's classification).
    """

    phi: float
    eta: np.ndarray  # [n_eta]
    scale: np.ndarray  # [n_scale]
    w0: np.ndarray  # [n_scale, L]
    rule: object

    @property
    def depth(self) -> int:
        return self.w0.shape[1]


def chain_grid(eta, scale, depth: int, phi: float, rule, scheme: str = "imbalanced", imbalance: float = 0.5,
               seed: int = 0) -> ChainGrid:
    """A ChainGrid from the two axes (1-D arrays) and an init scheme."""
    scale = np.asarray(scale, dtype=np.float64)
    w0 = chain_initial_weights(scale, depth, scheme, imbalance, seed)
    return ChainGrid(float(phi), np.asarray(eta, dtype=np.float64), scale, w0, rule)


# --- the engine ---------------------------------------------------------------------------------------

def chain_bytes_per_run(backend: str, depth: int) -> int:
    """Working memory one run needs while its chunk is simulated (inputs, state, copies, temporaries), for
    sizing chunks to a memory budget as engine.bytes_per_run does for the shallow engine."""
    per_float = {"numba": 3 * depth + 6, "torch": 6 * depth + 14, "cuda": 3 * depth + 8}[backend]
    return 8 * per_float


@dataclass
class ChainRuns(Runs):
    """Raw results of N chain runs: Runs' fields (residual eps, norm sum_l w_l^2, factor P, max_step
    max eta|eps_t|, steps) at the point where each run stopped, plus the final weights [N, L]."""

    weights: np.ndarray


def simulate_chain(eta, w0, phi: float, rule, init_index=None, backend: str = "numba", device: str = "cpu",
                   chunk_size: int = 65536, progress: Callable[[int], None] | None = None) -> ChainRuns:
    """Run i does GD with step eta[i] from w0[init_index[i]] (w0: [S, L]; init_index defaults to
    0..N-1, one initial point per run). Runs are simulated chunk_size at a time; `progress(n)` is called
    after each chunk of n runs. backend: one of CHAIN_BACKENDS; device: for backend='torch'."""
    if backend not in CHAIN_BACKENDS:
        raise ValueError(f"unknown chain backend {backend!r}; allowed: {', '.join(CHAIN_BACKENDS)}")
    eta = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.ndim != 2 or w0.shape[1] < 2:
        raise ValueError(f"w0 must be [S, L] with depth L >= 2, got shape {w0.shape}")
    init_index = np.arange(eta.size) if init_index is None else np.asarray(init_index)
    if init_index.shape != eta.shape:
        raise ValueError(f"init_index has shape {init_index.shape}, eta has {eta.shape}")
    depth = w0.shape[1]
    parts = []
    for start in range(0, eta.size, chunk_size):
        rates, index = eta[start:start + chunk_size], init_index[start:start + chunk_size]
        weights, factor, max_step, steps = _run(w0[index], rates, phi, rule, backend, device)
        parts.append((weights, factor, max_step, steps))
        if progress is not None:
            progress(rates.size)
    if parts:
        weights, factor, max_step, steps = (np.concatenate(field) for field in zip(*parts, strict=True))
    else:
        weights, factor, max_step, steps = np.zeros((0, depth)), np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    from shallownet.sweep.chain_kernel import residual_and_norm

    # The kernel's own expressions, so outcome() classifies each run exactly as its stop test did.
    residual, norm = residual_and_norm(weights, phi)
    return ChainRuns(residual, norm, factor, max_step, steps, weights)


def run_chain_grid(grid: ChainGrid, backend: str = "numba", device: str = "cpu", chunk_size: int = 65536,
                   progress: Callable[[int], None] | None = None) -> ChainRuns:
    """Every run of the grid, in flat order."""
    eta, index = grid.runs()
    return simulate_chain(eta, grid.w0, grid.phi, grid.rule, index, backend, device, chunk_size, progress)


def _run(w0, eta, phi, rule, backend, device):
    args = (w0, eta, float(phi), float(rule.tol), float(rule.divergence_norm), int(rule.max_steps))
    if backend == "numba":
        from shallownet.sweep.chain_kernel import run_chain_numba

        return run_chain_numba(*args)
    if backend == "cuda":
        from shallownet.sweep.cuda_kernels import run_chain_cuda

        return run_chain_cuda(*args)
    return tuple(t.cpu().numpy() for t in run_chain_torch(*args, device=device))


def run_chain_torch(w0, eta, phi, tol, divergence_norm, max_steps, device="cpu", check_every=CHECK_EVERY):
    """The kernel's recursion as float64 torch tensors: final weights [N, L], P, max eta|eps_t|, steps.

    One elementwise op per kernel (no fusion, so no FMA contraction): on any IEEE device the bits of the
    numba kernel. Stopped runs are frozen by selects; whether all have stopped is asked every
    `check_every` steps (a synchronisation). On CUDA, blocks of check_every steps are captured once as a
    CUDA graph and replayed.
    """
    import torch

    from shallownet.sweep.torch_paths import replay_until_stopped

    w = torch.as_tensor(np.asarray(w0, dtype=np.float64).T.copy()).to(device)  # [L, N]: rows contiguous
    eta = torch.as_tensor(np.asarray(eta, dtype=np.float64)).to(device)
    factor = torch.ones_like(eta)
    max_step = torch.zeros_like(eta)
    steps = torch.zeros(eta.shape, dtype=torch.int64, device=eta.device)
    zero = torch.zeros((), dtype=torch.float64, device=eta.device)
    state = (w, factor, max_step, steps, eta, float(phi), float(tol), float(divergence_norm), zero)
    replay_until_stopped(_torch_steps, state, max_steps, check_every, w.is_cuda)
    return w.T, factor, max_step, steps


def _torch_steps(state, n):
    """n steps of the kernel's update, in place; returns the last step's mask of active runs."""
    import torch

    from shallownet.sweep.kernel import TINY

    w, factor, max_step, steps, eta, phi, tol, divergence_norm, zero = state
    depth = w.shape[0]
    last = depth - 1

    def flush(t):
        return torch.where(t.abs() < TINY, zero, t)

    for _ in range(n):
        x = list(w.unbind(0))  # views: every row is read before any is written
        suffix = [None] * depth
        s = x[last]
        suffix[depth - 2] = s
        for j in range(depth - 3, -1, -1):
            s = x[j + 1] * s
            suffix[j] = s
        p = x[0] * s
        norm = x[0] * x[0]
        for j in range(1, depth):
            norm = norm + x[j] * x[j]
        eps = p - phi
        active = (eps.abs() > tol) & (norm <= divergence_norm)
        e = torch.where(active, eta * eps, zero)
        if depth > 2:
            m = x[1]  # the kernel's 1.0 * w_1: the same number
            for j in range(2, last):
                m = m * x[j]
            em = e * m
        else:
            em = e  # the kernel's e * 1.0
        torch.where(active, flush(factor * (1.0 - em * em)), factor, out=factor)
        q = x[0]
        new = [flush(q - e * s)]
        for j in range(1, last):
            new.append(flush(x[j] - e * (q * suffix[j])))
            q = q * x[j]
        new.append(flush(x[last] - e * q))
        new = [torch.where(active, row, x[j]) for j, row in enumerate(new)]
        for j in range(depth):
            w[j].copy_(new[j])
        torch.maximum(max_step, e.abs(), out=max_step)
        steps += active
    return active


# --- per-run records ----------------------------------------------------------------------------------

def chain_hessian(w, phi) -> np.ndarray:
    """Dense Hessians [N, L, L] of 1/2 (p - phi)^2 at the chains w [N, L]: grad p grad p^T + eps B with
    B_jk = prod_(l != j, k) w_l (j != k), B_jj = 0. Batched form of deep_theory.chain_hessian."""
    w = np.asarray(w, dtype=np.float64)
    n, depth = w.shape
    grad = deep_theory.leave_one_out_products(w)
    eps = np.prod(w, axis=1) - phi
    second = np.zeros((n, depth, depth))
    for j in range(depth):
        second[:, j, np.arange(depth) != j] = deep_theory.leave_one_out_products(np.delete(w, j, axis=1))
    return grad[:, :, None] * grad[:, None, :] + eps[:, None, None] * second


def chain_sharpness(w, phi) -> np.ndarray:
    """Top Hessian eigenvalue at each chain w [N, L]; NaN where w is not finite."""
    w = np.asarray(w, dtype=np.float64)
    out = np.full(w.shape[0], np.nan)
    finite = np.isfinite(w).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        hess = chain_hessian(w[finite], phi)
    ok = np.isfinite(hess).all(axis=(1, 2))
    values = np.full(hess.shape[0], np.nan)
    if ok.any():
        values[ok] = np.linalg.eigvalsh(hess[ok])[:, -1]
    out[finite] = values
    return out


def chain_initial_state(grid: ChainGrid) -> dict[str, np.ndarray]:
    """Per scale: eps(0), norm(0), the pairwise imbalance w_1^2 - w_L^2 at 0, sharpness(0) and the
    sharpness of the minimum gradient flow reaches from w0 (S_GF)."""
    w0 = grid.w0
    return {
        "residual0": np.prod(w0, axis=1) - grid.phi,
        "norm0": (w0 * w0).sum(axis=1),
        "imbalance0": w0[:, 0] ** 2 - w0[:, -1] ** 2,
        "sharpness0": chain_sharpness(w0, grid.phi),
        "gf_sharpness": np.asarray(deep_theory.chain_gf_solution_sharpness(w0, grid.phi), dtype=np.float64),
    }


def chain_records(grid: ChainGrid, runs: ChainRuns) -> dict[str, np.ndarray]:
    """Every per-run record as an [n_eta, n_scale] array (weights [n_eta, n_scale, L]), plus the axes,
    the per-scale initial state and the scalars least_sharpness = L |Phi|^(2-2/L) and
    stability_threshold = 2 / least_sharpness."""
    init = chain_initial_state(grid)
    shape = grid.shape
    outcome = runs.outcome(grid.rule).reshape(shape)
    weights = runs.weights.reshape(*shape, grid.depth)
    least = float(deep_theory.least_sharpness(grid.depth, grid.phi))
    sharpness = chain_sharpness(runs.weights, grid.phi).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        direct = (weights[..., 0] ** 2 - weights[..., -1] ** 2) / init["imbalance0"][None, :]
    return {
        "eta": grid.eta,
        "scale": grid.scale,
        "w0": grid.w0,
        **init,
        "depth": np.int64(grid.depth),
        "phi": np.float64(grid.phi),
        "least_sharpness": np.float64(least),
        "stability_threshold": np.float64(2.0 / least),
        "outcome": outcome,
        "steps": runs.steps.reshape(shape),
        "imbalance_ratio": runs.factor.reshape(shape),
        "imbalance_ratio_from_states": direct,
        "final_residual": runs.residual.reshape(shape),
        "final_norm": runs.norm.reshape(shape),
        "final_weights": weights,
        "final_sharpness": sharpness,
        "sharpness_over_least": sharpness / least,
        "sharpness_over_gf": sharpness / init["gf_sharpness"][None, :],
        "max_step_residual": runs.max_step.reshape(shape),
    }


def save_chain_npz(path: Path, recs: dict[str, np.ndarray]) -> None:
    from shallownet.sweep.results import save_npz

    save_npz(path, recs, OUTCOMES)


def chain_summary(grid: ChainGrid, recs: dict[str, np.ndarray]) -> dict:
    """Counts, ranges and theory checks of a chain sweep, for summary.json."""
    outcome, steps = recs["outcome"], recs["steps"]
    converged = outcome == CONVERGED
    eta = recs["eta"][:, None]
    ratio = recs["sharpness_over_gf"][converged]
    below_threshold = eta < recs["stability_threshold"]
    return {
        "depth": int(grid.depth),
        "phi": float(grid.phi),
        "runs": int(outcome.size),
        "grid_shape": list(outcome.shape),
        "outcomes": {name: int((outcome == code).sum()) for code, name in enumerate(OUTCOMES)},
        "config_steps": int(steps.sum()),
        "least_sharpness": float(recs["least_sharpness"]),
        "stability_threshold": float(recs["stability_threshold"]),
        "steps_converged": _range(steps[converged]),
        "imbalance_ratio": _range(recs["imbalance_ratio"][outcome != DIVERGED]),
        "imbalance_ratio_converged": _range(recs["imbalance_ratio"][converged]),
        "sharpness_over_least_converged": _range(recs["sharpness_over_least"][converged]),
        "sharpness_over_gf_converged": _range(ratio),
        "gd_flatter_than_gf_where_converged": int((ratio <= 1.0 + 1e-9).sum()),
        # No minimum has sharpness below L Phi^(2-2/L); every converged run ends at (nearly) a minimum.
        "converged_below_least_sharpness": int((recs["sharpness_over_least"][converged] < 1.0 - 1e-6).sum()),
        "converged_at_unstable_minimum": int((converged & (recs["final_sharpness"] > 2.0 / eta)).sum()),
        "converged_beyond_stability_threshold": int((converged & ~below_threshold).sum()),
        "not_converged_below_stability_threshold": int(((outcome == MAX_STEPS) & below_threshold).sum()),
    }


def _range(values: np.ndarray) -> dict | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}
