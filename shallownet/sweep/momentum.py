"""Many heavy-ball (or Nesterov) momentum runs of the shallow net at once: the sweep engine for beta > 0.

Run i is torch.optim.SGD(lr=eta[i], momentum=beta[i], dampening=0, nesterov=...) on (a, b) from
(a0[init_index[i]], b0[init_index[i]]) and zero velocity. It reduces exactly to four numbers per run
(alpha, mu, gamma, nu; docs/theory.md, "Heavy-ball momentum on the shallow net"), stepped on one of
two backends:

    numba  the CPU kernel (momentum_kernel.py), SIMD over blocks of runs; the default
    torch  the same recursion as torch tensors, operation for operation (so the same bits), on a CPU or
           CUDA, blocks of steps replayed from one CUDA graph there (torch_paths.replay_until_stopped)

Every run stops on its own by the one StopRule (shallownet.stop), tested before each step from the
state: converged once |eps| <= tol, diverged once lam > divergence_norm or non-finite, otherwise after
max_steps steps. With momentum, |eps| <= tol is tested on the position only, as for every other path
(a run with velocity left can pass through |eps| <= tol and would move on). The result is the GD
engine's Runs, with factor = alpha gamma = Q(T)/Q(0); at beta = 0 it is GD (shallownet.sweep.engine).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shallownet.stop import StopRule
from shallownet.sweep.engine import Runs

# torch, numba and the kernels are imported where a run is simulated: the sweep's config checks (and
# `shallownet sweep --help`) read the constants below without them

MOMENTUM_BACKENDS = ("numba", "torch")
# Working memory per run while a chunk is simulated (float64 state, inputs, temporaries), for sizing chunks.
BYTES_PER_RUN = {"numba": 160, "torch": 400}


def simulate_momentum(eta, beta, init_index, a0, b0, phi: float, rule: StopRule, *, nesterov: bool = False,
                      backend: str = "numba", device: str = "cpu", chunk_size: int = 65536,
                      progress: Callable[[int], None] | None = None) -> Runs:
    """Run i does SGD with momentum, step eta[i] and momentum beta[i] (beta: a number or one per run)
    from (a0[init_index[i]], b0[init_index[i]]) with zero velocity.

    a0, b0: [S, d] initial points shared by many runs (only |a0 +- b0|^2 enter). Runs are simulated
    chunk_size at a time; `progress(n)` is called after each chunk of n runs. Returns Runs with the final
    residual and norm, factor = Q(T)/Q(0), max_step = max eta|eps_t| over the steps taken, and steps.
    """
    eta = np.asarray(eta, dtype=np.float64)
    init_index = np.asarray(init_index)
    beta = np.asarray(beta, dtype=np.float64)
    a0, b0 = np.asarray(a0, dtype=np.float64), np.asarray(b0, dtype=np.float64)
    _check(eta, beta, init_index, a0, b0, backend, device, chunk_size)
    beta = np.broadcast_to(beta, eta.shape)
    u_init = ((a0 + b0) ** 2).sum(axis=1)
    v_init = ((a0 - b0) ** 2).sum(axis=1)
    parts = []
    for start in range(0, eta.size, chunk_size):
        piece = slice(start, start + chunk_size)
        u0, v0 = u_init[init_index[piece]], v_init[init_index[piece]]
        args = (u0, v0, eta[piece], beta[piece], phi, rule.tol, rule.divergence_norm, rule.max_steps)
        if backend == "numba":
            from shallownet.sweep.momentum_kernel import run_momentum_numba

            al, _, ga, _, max_step, steps = run_momentum_numba(*args, nesterov=nesterov)
        else:
            out = run_momentum_torch(*args, nesterov=nesterov, device=device)
            al, _, ga, _, max_step, steps = (t.cpu().numpy() for t in out)
        residual, norm = residual_and_norm(al, ga, u0, v0, phi)
        parts.append((residual, norm, al * ga, max_step, steps))
        if progress is not None:
            progress(u0.size)
    if not parts:
        empty = np.zeros(0)
        return Runs(empty, empty, empty, empty, np.zeros(0, dtype=np.int64))
    return Runs(*(np.concatenate(field) for field in zip(*parts, strict=True)))


def residual_and_norm(alpha, gamma, u0, v0, phi):
    """eps and lam of states (alpha, gamma) from (U0, V0), with exactly the kernels' operations (so the
    outcome read off them with StopRule.classify is the one the kernel's stop test saw)."""
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs overflow: inf and NaN are outcomes
        uu = alpha * alpha * u0
        vv = gamma * gamma * v0
        return (uu - vv) * 0.25 - phi, (uu + vv) * 0.5


def _check(eta, beta, init_index, a0, b0, backend, device, chunk_size):
    """One-line errors for bad input, before any work starts."""
    if backend not in MOMENTUM_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(MOMENTUM_BACKENDS)}, got {backend!r}")
    if backend == "numba" and device != "cpu":
        raise ValueError(f"device must be cpu for backend=numba (use backend=torch on {device}), got {device!r}")
    if eta.ndim != 1 or init_index.shape != eta.shape:
        raise ValueError(f"eta and init_index must be 1-D of one length, got shapes {eta.shape} and "
                         f"{init_index.shape}")
    if beta.ndim > 1 or beta.size not in (1, eta.size):
        raise ValueError(f"beta must be a number or one per run ({eta.size}), got shape {beta.shape}")
    if not (np.isfinite(beta) & (beta >= 0)).all():
        raise ValueError(f"beta must be finite and >= 0 (torch.optim.SGD's momentum), got min {beta.min()}")
    if a0.ndim != 2 or a0.shape != b0.shape:
        raise ValueError(f"a0 and b0 must be [S, d] of one shape, got {a0.shape} and {b0.shape}")
    if init_index.size and not (0 <= init_index.min() and init_index.max() < a0.shape[0]):
        raise ValueError(f"init_index must lie in [0, {a0.shape[0]}), got [{init_index.min()}, {init_index.max()}]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def run_momentum_torch(u0, v0, eta, beta, phi, tol, divergence_norm, max_steps, *, nesterov=False, device="cpu",
                       check_every=None):
    """The kernel's recursion as float64 torch tensors on `device`: final (alpha, mu, gamma, nu), max
    eta|eps_t| and steps (int64).

    One elementwise op per kernel in the kernel's order (no fusion, hence no FMA contraction): on any IEEE
    device it gives the numba kernel's bits. Stopped runs are frozen by a select, so checking only every
    check_every steps whether all have stopped changes nothing (None: torch_paths.CHECK_EVERY).
    """
    import torch

    from shallownet.sweep.torch_paths import CHECK_EVERY, replay_until_stopped

    def put(x):
        return torch.from_numpy(np.array(x, dtype=np.float64)).to(device)  # a copy: the state is written in place

    u0, v0, eta, beta = put(u0), put(v0), put(eta), put(beta)
    alpha, gamma = torch.ones_like(u0), torch.ones_like(u0)
    mu, nu, max_step = torch.zeros_like(u0), torch.zeros_like(u0), torch.zeros_like(u0)
    steps = torch.zeros(u0.shape, dtype=torch.int64, device=u0.device)
    zero = torch.zeros((), dtype=torch.float64, device=u0.device)
    state = (alpha, mu, gamma, nu, max_step, steps, u0, v0, eta, beta, phi, tol, divergence_norm, zero, nesterov)
    replay_until_stopped(_steps, state, max_steps, CHECK_EVERY if check_every is None else check_every, u0.is_cuda)
    return alpha, mu, gamma, nu, max_step, steps


def _steps(state, n):
    """n steps of the kernel's update, in place on (alpha, mu, gamma, nu, max_step, steps); the last mask."""
    import torch

    from shallownet.sweep.momentum_kernel import FLUSH

    alpha, mu, gamma, nu, max_step, steps, u0, v0, eta, beta, phi, tol, divergence_norm, zero, nesterov = state
    for _ in range(n):
        uu = alpha * alpha * u0
        vv = gamma * gamma * v0
        eps = (uu - vv) * 0.25 - phi
        lam = (uu + vv) * 0.5
        active = (eps.abs() > tol) & (lam <= divergence_norm)
        gu = eps * alpha
        gv = eps * gamma
        mu_next = beta * mu + gu
        nu_next = beta * nu - gv
        if nesterov:
            alpha_next = alpha - eta * (gu + beta * mu_next)
            gamma_next = gamma - eta * (beta * nu_next - gv)
        else:
            alpha_next = alpha - eta * mu_next
            gamma_next = gamma - eta * nu_next
        for new, old in ((alpha_next, alpha), (mu_next, mu), (gamma_next, gamma), (nu_next, nu)):
            flushed = torch.where(new.abs() < FLUSH, zero, new)
            torch.where(active, flushed, old, out=old)
        torch.maximum(max_step, torch.where(active, eta * eps, zero).abs(), out=max_step)
        steps += active
    return active
