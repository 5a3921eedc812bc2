"""The CPU kernel for depth-L scalar chains: many GD runs of f = w_1 ... w_L at once (theory.md 8.2).

Loss 1/2 (p - Phi)^2 with p = prod_l w_l; one GD step is w_l' = w_l - eta eps g_l, g_l = prod_(k != l) w_k.
Same layout and rules as the shallow kernel (kernel.py): blocks of BLOCK lanes stepped in lockstep,
STEPS_PER_PASS steps per load and store of a lane's state, with branch-free masked updates (SIMD over
lanes), blocks dealt cyclically to workers, no fastmath, values below the smallest normal float64 flushed
to 0, and the stop rule re-evaluated from the state every step.

The per-step arithmetic, in this order (0-based layers; every backend repeats it operation for operation,
which is what makes them agree bit for bit):

    suffix products   s_(L-2) = w_(L-1),  s_l = w_(l+1) * s_(l+1)        (l = L-3 .. 0)
    product           p = w_0 * s_0
    norm              n = w_0*w_0 + w_1*w_1 + ... + w_(L-1)*w_(L-1)        (left to right)
    stop test         active = |p - Phi| > tol and n <= divergence_norm     (NaN fails both)
    e                 eta * (p - Phi) where active, else 0
    middle product    m = w_1 * ... * w_(L-2)                               (m = 1 for L = 2)
    imbalance factor  P' = P * (1 - (e*m)^2)     (w_1^2 - w_L^2 is multiplied by exactly this per step)
    update            w_0' = w_0 - e * s_0;  with q_1 = w_0, q_(l+1) = q_l * w_l:
                      w_l' = w_l - e * (q_l * s_l)  (0 < l < L-1);  w_(L-1)' = w_(L-1) - e * q_(L-1)

The leave-one-out products g_l are prefix times suffix (no division, exact at w_l = 0): p and every g_l
take 3L - 5 multiplications. A stopped lane keeps its state by a select (not by a zero step, since
0 * inf would turn a huge frozen state into NaN), so it is frozen bit for bit.

The depth enters the kernel as the length of a tuple (`depth_tag`): numba compiles one specialisation
per depth with constant loop bounds, LLVM unrolls the loops over layers, keeps a lane's weights and
suffix products (two small stack buffers) in registers and vectorises over lanes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from shallownet.sweep.kernel import STEPS_PER_PASS, TINY

BLOCK = 256  # lanes stepped in lockstep: a block's state (L + 4 arrays of BLOCK numbers) stays in L1
WORKERS_PER_THREAD = 8  # blocks are dealt cyclically to this many workers per thread, to balance load


def flops_per_config_step(depth: int) -> int:
    """Floating-point operations of one config-step of the kernel (compares, selects, abs not counted).

    suffix L-2, p 1, norm 2L-1, eps 1, e 1, m L-3, e*m 1, P' 3, update 2 + 4(L-2) + 2, max 1: 8L - 2
    for L >= 3; for L = 2 (no middle product, e*m = e): 14.
    """
    if depth < 2:
        raise ValueError("depth must be >= 2")
    return 14 if depth == 2 else 8 * depth - 2


@intrinsic
def _stack_buffer(typingctx, depth_tag):
    """A float64 buffer of len(depth_tag) elements on the stack (a raw pointer, indexed like an array).

    numba has no stack arrays; an np.empty would live on the heap and escape, so its loads and stores
    would stay in memory. A fixed-size alloca indexed only with constants (after the loops over layers
    unroll) is turned into registers by LLVM, and the loop over lanes stays vectorisable.
    """
    size = depth_tag.count

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float64), size=size)

    return types.CPointer(types.float64)(depth_tag), codegen


@njit(inline="always")
def _lane_step(x, suffix, depth, f, top, k, rate, phi, tol, divergence_norm):
    """One step of one lane: updates its weights x in place and returns its new P, max eta|eps|, step
    count, and whether it was active. suffix is scratch (suffix[l] = w_(l+1) ... w_(L-1))."""
    last = depth - 1
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
    # NaN fails both comparisons, so a non-finite lane stops too.
    active = (abs(eps) > tol) & (norm <= divergence_norm)
    e = rate * eps
    e = e if active else 0.0
    m = 1.0
    for j in range(1, last):
        m = m * x[j]
    em = e * m
    f_next = f * (1.0 - em * em)
    f_next = 0.0 if abs(f_next) < TINY else f_next  # comparisons are False for NaN: it is kept
    f = f_next if active else f
    q = x[0]  # prefix product w_0 ... w_(l-1)
    w_next = q - e * s
    w_next = 0.0 if abs(w_next) < TINY else w_next
    x[0] = w_next if active else q
    for j in range(1, last):
        xj = x[j]
        w_next = xj - e * (q * suffix[j])
        w_next = 0.0 if abs(w_next) < TINY else w_next
        x[j] = w_next if active else xj
        q = q * xj
    w_next = x[last] - e * q
    w_next = 0.0 if abs(w_next) < TINY else w_next
    x[last] = w_next if active else x[last]
    return f, max(top, abs(e)), k + active, active


@njit(cache=True)
def _run_block(w, factor, max_step, steps, eta, phi, tol, divergence_norm, max_steps, depth_tag):
    """Advance one block in place until every lane stops or max_steps steps are taken.

    w: [L * BLOCK] weights, layer l of lane i at l * BLOCK + i (rows a constant distance apart, so LLVM
    needs no runtime alias checks between them); factor, max_step, steps, eta: [BLOCK].
    """
    depth = len(depth_tag)  # a compile-time constant: the loops over layers unroll
    x = _stack_buffer(depth_tag)  # this lane's weights
    suffix = _stack_buffer(depth_tag)
    done = 0
    while done < max_steps:
        chunk = STEPS_PER_PASS if max_steps - done >= STEPS_PER_PASS else 1
        n_active = 0  # lanes that stepped in the pass's last step (a stopped lane stays stopped)
        for i in range(BLOCK):
            for j in range(depth):
                x[j] = w[j * BLOCK + i]
            f, top, k, rate = factor[i], max_step[i], steps[i], eta[i]
            if chunk == STEPS_PER_PASS:
                for _ in range(STEPS_PER_PASS):  # a constant trip count: unrolled, so the lane loop vectorises
                    f, top, k, active = _lane_step(x, suffix, depth, f, top, k, rate, phi, tol, divergence_norm)
            else:
                f, top, k, active = _lane_step(x, suffix, depth, f, top, k, rate, phi, tol, divergence_norm)
            # Every value is stored once, unconditionally: a store of a value just re-loaded from the same
            # place would be turned into a masked store, which is slow on x86.
            for j in range(depth):
                w[j * BLOCK + i] = x[j]
            factor[i], max_step[i], steps[i] = f, top, k
            n_active += active
        done += chunk
        if n_active == 0:
            return


@njit(parallel=True, cache=True)
def _run_blocks(w, factor, max_step, steps, eta, phi, tol, divergence_norm, max_steps, depth_tag, n_workers):
    """w: [n_blocks, L * BLOCK]; factor, max_step, steps, eta: [n_blocks, BLOCK]."""
    n_blocks = w.shape[0]
    # Blocks are dealt cyclically to many workers, so each thread gets a mix of cheap and dear parts.
    for worker in prange(n_workers):
        for block in range(worker, n_blocks, n_workers):
            _run_block(w[block], factor[block], max_step[block], steps[block], eta[block], phi, tol,
                       divergence_norm, max_steps, depth_tag)


def run_chain_numba(w0, eta, phi, tol, divergence_norm, max_steps):
    """Final weights [N, L], P, max eta|eps_t| and steps of runs from w0 [N, L] with steps eta [N]."""
    w0 = np.asarray(w0, dtype=np.float64)
    n, depth = w0.shape
    if depth < 2:
        raise ValueError(f"a chain needs depth >= 2, got {depth}")
    n_blocks = -(-n // BLOCK)
    padded = n_blocks * BLOCK
    # Padding lanes are NaN: stopped from the start, they never keep a block running.
    flat = np.full((depth, padded), np.nan)
    flat[:, :n] = w0.T
    w = np.ascontiguousarray(flat.reshape(depth, n_blocks, BLOCK).transpose(1, 0, 2)).reshape(n_blocks, -1)
    rates = np.ones(padded)
    rates[:n] = eta
    factor = np.ones(padded)
    max_step = np.zeros(padded)
    steps = np.zeros(padded, dtype=np.int64)
    n_workers = WORKERS_PER_THREAD * numba.get_num_threads()
    _run_blocks(w, factor.reshape(n_blocks, BLOCK), max_step.reshape(n_blocks, BLOCK),
                steps.reshape(n_blocks, BLOCK), rates.reshape(n_blocks, BLOCK), float(phi), float(tol),
                float(divergence_norm), int(max_steps), (0,) * depth, n_workers)
    weights = w.reshape(n_blocks, depth, BLOCK).transpose(1, 0, 2).reshape(depth, padded)[:, :n].T.copy()
    return weights, factor[:n], max_step[:n], steps[:n]


def residual_and_norm(w, phi):
    """eps and sum_l w_l^2 of weights w [N, L], with exactly the kernel's operations (so the same bits)."""
    w = np.asarray(w, dtype=np.float64)
    depth = w.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs overflow: inf and NaN are outcomes
        s = w[:, depth - 1]
        for j in range(depth - 2, 0, -1):
            s = w[:, j] * s
        norm = w[:, 0] * w[:, 0]
        for j in range(1, depth):
            norm = norm + w[:, j] * w[:, j]
        return w[:, 0] * s - phi, norm


def load_kernel(depth: int) -> None:
    """Compile the kernel for this depth, or load it from numba's cache, by running one tiny block."""
    run_chain_numba(np.zeros((1, depth)), np.zeros(1), 1.0, 1.0, 1.0, 1)
