"""The same simulation in torch: the (U, V) recursion for CUDA, and the full [N, d] GD cross-check.

Both use the kernel's stop rule (a stopped run takes a zero step, frozen bit-for-bit) and check only
every `check_every` steps whether all runs have stopped, since asking the GPU is a synchronisation;
the extra steps of stopped runs change nothing.
The (U, V) path performs exactly the kernel's operations in the same order, one elementwise op per
kernel (no fusion, hence no FMA contraction), so on any IEEE device it gives the kernel's bits.
"""

from __future__ import annotations

import torch

from shallownet.sweep.kernel import TINY

CHECK_EVERY = 256


def replay_until_stopped(steps_fn, state: tuple, max_steps: int, check_every: int, on_cuda: bool) -> None:
    """Advance `state` in place by `steps_fn(state, n)` (which returns the active mask) in blocks of
    check_every steps until no run is active or max_steps are done; on CUDA the blocks after the first are
    replayed from one captured graph."""
    graph, done = None, 0
    while done < max_steps:
        block = min(check_every, max_steps - done)
        # The first block runs eagerly: it warms up the kernels before capture, as CUDA graphs need.
        if on_cuda and done > 0 and block == check_every:
            if graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    graph_active = steps_fn(state, block)
            graph.replay()
            active = graph_active
        else:
            active = steps_fn(state, block)
        done += block
        if not bool(active.any()):
            break


def run_uv_torch(u0, v0, eta, phi, tol, divergence_norm, max_steps, device, check_every=CHECK_EVERY):
    """Final (U, V), P, max eta|eps_t| and steps, as float64/int64 tensors on `device`.

    On CUDA, blocks of check_every steps are captured once as a CUDA graph and replayed: ~30 tiny
    kernels per step make the GPU launch-bound otherwise. Replaying runs the very same kernels.
    """
    def put(x):
        return torch.as_tensor(x, dtype=torch.float64).to(device).clone()

    u, v, eta = put(u0), put(v0), put(eta)
    factor = torch.ones_like(u)
    max_step = torch.zeros_like(u)
    steps = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    zero = torch.zeros((), dtype=torch.float64, device=u.device)
    state = (u, v, factor, max_step, steps, eta, phi, tol, divergence_norm, zero)
    replay_until_stopped(_steps, state, max_steps, check_every, u.is_cuda)
    return u, v, factor, max_step, steps


def _steps(state, n):
    """n steps of the kernel's update, in place on (u, v, factor, max_step, steps); the last mask."""
    u, v, factor, max_step, steps, eta, phi, tol, divergence_norm, zero = state
    for _ in range(n):
        eps = (u - v) * 0.25 - phi
        lam = (u + v) * 0.5
        active = (eps.abs() > tol) & (lam <= divergence_norm)
        e = torch.where(active, eta * eps, zero)
        shrink, grow = 1.0 - e, 1.0 + e
        u_next = shrink * shrink * u
        v_next = grow * grow * v
        f_next = factor * (1.0 - e * e)
        torch.where(u_next < TINY, zero, u_next, out=u)
        torch.where(v_next < TINY, zero, v_next, out=v)
        torch.where(f_next.abs() < TINY, zero, f_next, out=factor)
        torch.maximum(max_step, e.abs(), out=max_step)
        steps += active
    return active


def run_ab_torch(a0, b0, eta, phi, tol, divergence_norm, max_steps, device, check_every=CHECK_EVERY):
    """Plain GD a' = a - eta eps b, b' = b - eta eps a on [N, d] tensors; no flush, no shortcut.

    Returns final (residual, norm), P (the product of 1 - eta^2 eps_t^2), max eta|eps_t|, steps.
    """
    a = torch.as_tensor(a0, dtype=torch.float64).to(device).clone()
    b = torch.as_tensor(b0, dtype=torch.float64).to(device).clone()
    eta = torch.as_tensor(eta, dtype=torch.float64).to(device)
    n = a.shape[0]
    factor = torch.ones(n, dtype=torch.float64, device=a.device)
    max_step = torch.zeros_like(factor)
    steps = torch.zeros(n, dtype=torch.int64, device=a.device)
    zero = torch.zeros((), dtype=torch.float64, device=a.device)

    def residual_and_norm(a, b):
        return (a * b).sum(1) - phi, (a * a).sum(1) + (b * b).sum(1)

    for k in range(max_steps):
        eps, lam = residual_and_norm(a, b)
        active = (eps.abs() > tol) & (lam <= divergence_norm)
        e = torch.where(active, eta * eps, zero)
        keep = active[:, None]
        a, b = torch.where(keep, a - e[:, None] * b, a), torch.where(keep, b - e[:, None] * a, b)
        factor = torch.where(active, factor * (1.0 - e * e), factor)
        max_step = torch.maximum(max_step, e.abs())
        steps += active
        if (k + 1) % check_every == 0 and not bool(active.any()):
            break
    residual, norm = residual_and_norm(a, b)
    return residual, norm, factor, max_step, steps
