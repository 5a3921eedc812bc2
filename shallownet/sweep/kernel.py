"""The CPU kernel: many GD runs of the exact (U, V) recursion (theory.md section 3) with numba.

Layout: configurations are cut into blocks of BLOCK lanes; within a block every lane takes its steps in
lockstep, STEPS_PER_PASS at a time with its state in registers, so the inner loop over lanes is branch-free
and LLVM turns it into SIMD code. A lane that has
stopped (converged or diverged) takes a zero step, which leaves its state bit-for-bit unchanged, so the
stop test can be re-evaluated from the state at every step instead of being stored. A block ends when
all its lanes have stopped. No fastmath: strict IEEE keeps NaN/inf detection, and without FMA
contraction every lane gives the same bits wherever it sits (SIMD body, another block, another process).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

BLOCK = 256  # lanes stepped in lockstep: state of a block (6 arrays) stays in L1, enough to hide latency
WORKERS_PER_THREAD = 8  # blocks are dealt cyclically to this many workers per thread, to balance load

# Smallest normal float64. Values that fall below it are flushed to 0 (U, V -> 0 as the imbalance
# collapses, P -> 0 in chaos): subnormal arithmetic costs ~100 cycles per operation on x86, which made
# chaotic runs 5-10x slower. Only numbers already < 2.2e-308 change, nothing the stop test can see.
TINY = np.finfo(np.float64).tiny


# Steps a lane takes per pass over its block: its state is loaded and stored once per pass, not once per
# step. At one step per pass loads and stores, not arithmetic, set the pace: two steps took the busy engines
# from 7.8e8 to 0.86-1.36e9 (shallow) and from 3.9e8 to 7.3-7.8e8 (depth-4 chain) config-steps/s on the
# 2-core development machine (bench_sweep.py, bench_chain_sweep.py; docs/benchmarks.md). More steps unroll into loop
# bodies too large for LLVM to vectorise: 4 ran the chains of depth 6 and 8 at 0.4x. chain_kernel.py
# compiles this number in, and numba's on-disk cache only notices edits to a kernel's own file: after
# changing it, clear __pycache__.
STEPS_PER_PASS = 2


@njit(inline="always")
def _lane_step(ui, vi, f, top, k, rate, phi, tol, divergence_norm):
    """One step of one lane: its new (U, V), P, max eta|eps|, step count, and whether it was active."""
    eps = (ui - vi) * 0.25 - phi
    lam = (ui + vi) * 0.5
    # NaN fails both comparisons, so a non-finite lane stops too.
    active = (abs(eps) > tol) & (lam <= divergence_norm)
    e = rate * eps if active else 0.0
    shrink, grow = 1.0 - e, 1.0 + e
    u_next = shrink * shrink * ui
    v_next = grow * grow * vi
    f_next = f * (1.0 - e * e)
    ui = 0.0 if u_next < TINY else u_next  # comparisons are False for NaN: it is kept
    vi = 0.0 if v_next < TINY else v_next
    f = 0.0 if abs(f_next) < TINY else f_next
    return ui, vi, f, max(top, abs(e)), k + active, active


@njit(cache=True)
def _run_block(u, v, factor, max_step, steps, eta, phi, tol, divergence_norm, max_steps):
    """Advance one block in place until every lane stops or max_steps steps are taken."""
    done = 0
    while done < max_steps:
        chunk = STEPS_PER_PASS if max_steps - done >= STEPS_PER_PASS else 1
        n_active = 0  # lanes that stepped in the pass's last step (a stopped lane stays stopped)
        for i in range(u.shape[0]):
            ui, vi, f, top, k, rate = u[i], v[i], factor[i], max_step[i], steps[i], eta[i]
            if chunk == STEPS_PER_PASS:
                for _ in range(STEPS_PER_PASS):  # a constant trip count: unrolled, so the lane loop vectorises
                    ui, vi, f, top, k, active = _lane_step(ui, vi, f, top, k, rate, phi, tol, divergence_norm)
            else:
                ui, vi, f, top, k, active = _lane_step(ui, vi, f, top, k, rate, phi, tol, divergence_norm)
            u[i], v[i], factor[i], max_step[i], steps[i] = ui, vi, f, top, k
            n_active += active
        done += chunk
        if n_active == 0:
            return


@njit(parallel=True, cache=True)
def _run_blocks(u, v, factor, max_step, steps, eta, phi, tol, divergence_norm, max_steps, n_workers):
    n_blocks = u.shape[0] // BLOCK
    # prange splits its range into one contiguous piece per thread; dealing blocks cyclically to many
    # workers gives each thread a mix of cheap and expensive parts of the grid.
    for worker in prange(n_workers):
        for block in range(worker, n_blocks, n_workers):
            s = slice(block * BLOCK, (block + 1) * BLOCK)
            _run_block(u[s], v[s], factor[s], max_step[s], steps[s], eta[s], phi, tol, divergence_norm,
                       max_steps)


def run_uv_numba(u0, v0, eta, phi, tol, divergence_norm, max_steps):
    """Final (U, V), P, max eta|eps_t| and steps taken for runs from (u0, v0) with steps eta (1-D)."""
    n = u0.shape[0]
    padded = -(-n // BLOCK) * BLOCK
    # Padding lanes are NaN: stopped from the start, they never keep a block running.
    u = np.full(padded, np.nan)
    v = np.full(padded, np.nan)
    rates = np.ones(padded)
    u[:n], v[:n], rates[:n] = u0, v0, eta
    factor = np.ones(padded)
    max_step = np.zeros(padded)
    steps = np.zeros(padded, dtype=np.int64)
    n_workers = WORKERS_PER_THREAD * numba.get_num_threads()
    _run_blocks(u, v, factor, max_step, steps, rates, float(phi), float(tol), float(divergence_norm),
                int(max_steps), n_workers)
    return u[:n], v[:n], factor[:n], max_step[:n], steps[:n]


def load_kernel() -> None:
    """Compile the kernel, or load it from numba's cache, by running one tiny block."""
    run_uv_numba(np.zeros(1), np.zeros(1), np.zeros(1), 1.0, 1.0, 1.0, 1)
