"""The CPU kernel for heavy-ball (and Nesterov) momentum on the shallow net: four numbers per run.

With u = a + b, v = a - b the gradients are grad_u = eps u and grad_v = -eps v, so from zero velocity the
momentum buffers stay parallel to u0 and v0 (docs/theory.md, "Heavy-ball momentum on the shallow net"):
u = alpha u0, m_u = mu u0, v = gamma v0, m_v = nu v0, and one step of torch.optim.SGD (dampening 0) is

    eps = (alpha^2 U0 - gamma^2 V0) / 4 - Phi,   lam = (alpha^2 U0 + gamma^2 V0) / 2
    mu' = beta mu + eps alpha,   nu' = beta nu - eps gamma                       (the buffers)
    heavy ball: alpha' = alpha - eta mu',                 gamma' = gamma - eta nu'
    Nesterov:   alpha' = alpha - eta (eps alpha + beta mu'),  gamma' = gamma - eta (beta nu' - eps gamma)

with alpha = gamma = 1, mu = nu = 0 at the start (torch's first step sets buf = g, which is beta 0 + g).
Q(T)/Q(0) = alpha gamma. The per-step arithmetic, in this order (the torch recursion in momentum.py
repeats it operation for operation, which is what makes the two agree bit for bit):

    uu = alpha * alpha * U0;  vv = gamma * gamma * V0   (left to right)
    eps = (uu - vv) * 0.25 - Phi;  lam = (uu + vv) * 0.5
    active = |eps| > tol and lam <= divergence_norm       (NaN fails both: a non-finite lane stops)
    gu = eps * alpha;  gv = eps * gamma;  mu' = beta * mu + gu;  nu' = beta * nu - gv
    alpha' = alpha - eta * mu'   or  alpha - eta * (gu + beta * mu')
    gamma' = gamma - eta * nu'   or  gamma - eta * (beta * nu' - gv)
    each of alpha', mu', gamma', nu' flushed to 0 below FLUSH in magnitude; a stopped lane keeps its state
    max_step = max(max_step, |eta * eps|) where active;  steps += active

Same layout and rules as the GD kernel (kernel.py): blocks of BLOCK lanes stepped in lockstep,
STEPS_PER_PASS steps per load and store of a lane's state, branch-free masked updates (SIMD over lanes),
blocks dealt cyclically to workers, no fastmath. A stopped lane keeps its state by a select, not by a zero
step (with momentum a zero gradient still moves the buffer), so it is frozen bit for bit and the stop test
can be re-evaluated from the state every step.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# Compiled in as a constant: numba's on-disk cache only notices edits to this file, so after changing
# STEPS_PER_PASS in kernel.py clear __pycache__ here too.
from shallownet.sweep.kernel import STEPS_PER_PASS

BLOCK = 256  # lanes stepped in lockstep: a block's state and inputs (9 rows of BLOCK numbers) stay in L1
WORKERS_PER_THREAD = 8  # blocks are dealt cyclically to this many workers per thread, to balance load
STATE_ROWS = ("alpha", "mu", "gamma", "nu", "max_step")  # a block's float state, one row of BLOCK lanes each
INPUT_ROWS = ("u0", "v0", "eta", "beta")

# Multipliers below 2^-480 in magnitude are flushed to 0. The kernel squares alpha and gamma and multiplies
# by U0, V0: with |alpha| >= 2^-480, alpha^2 U0 stays a normal number for any U0 >= 2^-62, so no subnormal
# arithmetic (~100 cycles per operation on x86) happens while the imbalance collapses (gamma -> 0 in chaos).
# What the flush drops is alpha^2 U0 < 2^-960 U0 (~1e-289 U0) in eps and lam, invisible to the stop test,
# and a factor alpha gamma below ~1e-144 |gamma| (reported as 0). The GD kernel flushes U, V only below
# the smallest normal number instead, so at beta = 0 the two report different factors only under ~1e-144.
FLUSH = 2.0**-480


@njit(inline="always")
def _lane_step(al, mu, ga, nu, top, k, u0, v0, rate, beta, phi, tol, divergence_norm, nesterov):
    """One step of one lane: its new (alpha, mu, gamma, nu), max eta|eps|, step count, and whether it was
    active. nesterov is a compile-time constant (see _run_block), so the branch on it folds away."""
    uu = al * al * u0
    vv = ga * ga * v0
    eps = (uu - vv) * 0.25 - phi
    lam = (uu + vv) * 0.5
    active = (abs(eps) > tol) & (lam <= divergence_norm)
    gu = eps * al
    gv = eps * ga
    mu_next = beta * mu + gu
    nu_next = beta * nu - gv
    if nesterov:
        al_next = al - rate * (gu + beta * mu_next)
        ga_next = ga - rate * (beta * nu_next - gv)
    else:
        al_next = al - rate * mu_next
        ga_next = ga - rate * nu_next
    al_next = 0.0 if abs(al_next) < FLUSH else al_next  # comparisons are False for NaN: it is kept
    mu_next = 0.0 if abs(mu_next) < FLUSH else mu_next
    ga_next = 0.0 if abs(ga_next) < FLUSH else ga_next
    nu_next = 0.0 if abs(nu_next) < FLUSH else nu_next
    e = rate * eps if active else 0.0
    return (al_next if active else al, mu_next if active else mu, ga_next if active else ga,
            nu_next if active else nu, max(top, abs(e)), k + active, active)


@njit(cache=True)
def _run_block(state, steps, inputs, phi, tol, divergence_norm, max_steps, variant):
    """Advance one block in place until every lane stops or max_steps steps are taken.

    state: [5 * BLOCK] rows alpha, mu, gamma, nu, max_step; inputs: [4 * BLOCK] rows U0, V0, eta, beta;
    steps: [BLOCK]. Rows of one array sit a constant distance apart, so LLVM needs no runtime alias checks
    between them. variant: () for heavy ball, (0,) for Nesterov (its length is a compile-time constant).
    """
    nesterov = len(variant) == 1
    done = 0
    while done < max_steps:
        chunk = STEPS_PER_PASS if max_steps - done >= STEPS_PER_PASS else 1
        n_active = 0  # lanes that stepped in the pass's last step (a stopped lane stays stopped)
        for i in range(BLOCK):
            al, mu, ga, nu, top = (state[i], state[BLOCK + i], state[2 * BLOCK + i], state[3 * BLOCK + i],
                                   state[4 * BLOCK + i])
            u0, v0, rate, beta = inputs[i], inputs[BLOCK + i], inputs[2 * BLOCK + i], inputs[3 * BLOCK + i]
            k = steps[i]
            if chunk == STEPS_PER_PASS:
                for _ in range(STEPS_PER_PASS):  # a constant trip count: unrolled, so the lane loop vectorises
                    al, mu, ga, nu, top, k, active = _lane_step(al, mu, ga, nu, top, k, u0, v0, rate, beta, phi,
                                                                tol, divergence_norm, nesterov)
            else:
                al, mu, ga, nu, top, k, active = _lane_step(al, mu, ga, nu, top, k, u0, v0, rate, beta, phi, tol,
                                                            divergence_norm, nesterov)
            # Every value is stored unconditionally: a store of a value just re-loaded from the same place
            # would be turned into a masked store, which is slow on x86.
            state[i], state[BLOCK + i], state[2 * BLOCK + i], state[3 * BLOCK + i] = al, mu, ga, nu
            state[4 * BLOCK + i] = top
            steps[i] = k
            n_active += active
        done += chunk
        if n_active == 0:
            return


@njit(parallel=True, cache=True)
def _run_blocks(state, steps, inputs, phi, tol, divergence_norm, max_steps, variant, n_workers):
    """state: [n_blocks, 5 * BLOCK]; steps: [n_blocks, BLOCK]; inputs: [n_blocks, 4 * BLOCK]."""
    n_blocks = state.shape[0]
    # prange splits its range into one contiguous piece per thread; dealing blocks cyclically to many
    # workers gives each thread a mix of cheap and expensive parts of the grid.
    for worker in prange(n_workers):
        for block in range(worker, n_blocks, n_workers):
            _run_block(state[block], steps[block], inputs[block], phi, tol, divergence_norm, max_steps, variant)


def run_momentum_numba(u0, v0, eta, beta, phi, tol, divergence_norm, max_steps, nesterov=False):
    """Final (alpha, mu, gamma, nu), max eta|eps_t| and steps of runs from (U0, V0) with steps eta and
    momentum beta (1-D arrays of one length), from zero velocity."""
    n = np.shape(u0)[0]
    n_blocks = -(-n // BLOCK)
    padded = n_blocks * BLOCK
    inputs = np.ones((len(INPUT_ROWS), padded))
    # Padding lanes have U0 = NaN: stopped from the start, they never keep a block running.
    inputs[0] = np.nan
    inputs[:, :n] = u0, v0, eta, beta
    state = np.zeros((len(STATE_ROWS), padded))
    state[0] = state[2] = 1.0  # alpha = gamma = 1; buffers and max_step 0
    steps = np.zeros(padded, dtype=np.int64)

    def blocked(rows):  # [R, padded] -> [n_blocks, R * BLOCK], a block's rows contiguous
        return np.ascontiguousarray(rows.reshape(len(rows), n_blocks, BLOCK).transpose(1, 0, 2)).reshape(
            n_blocks, -1)

    state_b = blocked(state)
    n_workers = WORKERS_PER_THREAD * numba.get_num_threads()
    _run_blocks(state_b, steps.reshape(n_blocks, BLOCK), blocked(inputs), float(phi), float(tol),
                float(divergence_norm), int(max_steps), (0,) if nesterov else (), n_workers)
    rows = state_b.reshape(n_blocks, len(STATE_ROWS), BLOCK).transpose(1, 0, 2).reshape(len(STATE_ROWS), padded)
    al, mu, ga, nu, max_step = (row[:n].copy() for row in rows)
    return al, mu, ga, nu, max_step, steps[:n]


def load_kernel(nesterov: bool = False) -> None:
    """Compile the kernel, or load it from numba's cache, by running one tiny block."""
    run_momentum_numba(np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), 1.0, 1.0, 1.0, 1, nesterov)
