"""Orbit period and finite-time Lyapunov exponent of the sweep's runs that end at their budget.

A run that neither converged nor diverged within train.max_steps is continued for orbit.steps (K) more GD
steps from its final state. On those K iterates:

    orbit_period   the smallest p with z_{t+p} = z_t to orbit.tol over the whole tail (shallownet.orbits'
                   orbit_periods: 1, 2, 4, ...; 0 where none was found: chaos, not settled, or diverged);
    lyapunov       (1/K) sum_t log |J_t w_t| with w renormalised every step, J = I - eta H the exact
                   one-step Jacobian (H the loss Hessian at z_t), w from a fixed start off every invariant line.

Runs that converged or diverged within the budget get period -1 and exponent NaN (not analysed).

The shallow net of any width is continued as its reduction: the (U, V) recursion is the width-1 GD map
in (|a + b|, |a - b|), i.e. the width-1 net at a = (|u| + |v|)/2, b = (|u| - |v|)/2. Its exponent is the
reduced map's: the rotations of (a, b) that leave U and V fixed are neutral directions (exponent 0), left
out. A chain is continued as its weights w, with B t (B the Hessian of p = prod w) by the product rule on
prefix and suffix products, so a zero weight needs no division.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shallownet import deep_theory, orbits

PASS_BYTES = 64 * 2**20  # the K iterates of the runs followed at once ([K, runs, dim] float64) fit in this
NOT_ANALYSED = -1


def follow(z0: np.ndarray, step: Callable, tangent_map: Callable, n_steps: int, w0: np.ndarray,
           divergence_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Iterates [n_steps, N, D] after z0 [N, D] and the finite-time Lyapunov exponent [N] along them.

    step(z) -> the next states; tangent_map(z, w) -> J(z) w. A run whose |z|^2 passes divergence_norm (or turns
    non-finite) is NaN from there on, and so is its exponent.
    """
    z, w = z0.copy(), np.broadcast_to(w0 / np.linalg.norm(w0), z0.shape).copy()
    iterates = np.empty((n_steps, *z0.shape))
    total = np.zeros(z0.shape[0])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(n_steps):
            w = tangent_map(z, w)
            growth = np.linalg.norm(w, axis=1)
            total += np.log(growth)
            w /= growth[:, None]
            z = step(z)
            norm = (z * z).sum(axis=1)
            z[~(norm <= divergence_norm)] = np.nan  # NaN fails the comparison too: it stays NaN
            iterates[t] = z
    return iterates, np.where(np.isfinite(z).all(axis=1), total / n_steps, np.nan)


def orbit_fields(z0, step, tangent_map, w0, at_budget: np.ndarray, n_steps: int, tol: float,
                 divergence_norm: float, max_period: int = 64) -> dict[str, np.ndarray]:
    """orbit_period (int16) and lyapunov per run: z0 [N, D] the final states, at_budget [N] the runs to
    analyse (module docstring); the others get NOT_ANALYSED and NaN."""
    n = at_budget.size
    period = np.full(n, NOT_ANALYSED, dtype=np.int16)
    exponent = np.full(n, np.nan)
    chosen = np.flatnonzero(at_budget) if n_steps > 0 else np.zeros(0, dtype=int)
    per_pass = max(1, PASS_BYTES // (8 * max(n_steps, 1) * z0.shape[1]))
    for start in range(0, chosen.size, per_pass):
        runs = chosen[start:start + per_pass]
        iterates, exponent[runs] = follow(z0[runs], lambda z, runs=runs: step(z, runs),
                                          lambda z, w, runs=runs: tangent_map(z, w, runs), n_steps, w0,
                                          divergence_norm)
        period[runs] = orbits.orbit_periods(iterates, tol, max_period)
    return {"orbit_period": period, "lyapunov": exponent}


def shallow_orbit_fields(residual, norm, eta, phi: float, at_budget, n_steps: int, tol: float,
                         divergence_norm: float) -> dict[str, np.ndarray]:
    """orbit_fields of shallow-net runs given by their final residual eps and norm lam (1-D), step sizes eta."""
    eta = np.asarray(eta, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        big = np.sqrt(np.maximum(norm + 2 * (residual + phi), 0.0))  # |a + b| = sqrt(U)
        small = np.sqrt(np.maximum(norm - 2 * (residual + phi), 0.0))  # |a - b| = sqrt(V)
    z0 = np.stack([(big + small) / 2, (big - small) / 2], axis=1)

    def step(z, runs):
        return np.stack(orbits.gd_step(z[:, 0], z[:, 1], phi, eta[runs]), axis=1)

    def tangent_map(z, w, runs):
        return np.einsum("nij,nj->ni", orbits.jacobian(z[:, 0], z[:, 1], phi, eta[runs]), w)

    # (0.6, 0.8): shallownet.orbits.lyapunov's start, off both invariant lines a = b and a = -b
    return orbit_fields(z0, step, tangent_map, np.array([0.6, 0.8]), at_budget, n_steps, tol, divergence_norm)


def chain_tangent_map(w, t, eta, phi):
    """J t = t - eta (g (g . t) + eps B t) for the chains w [N, L] (g = grad p, B = Hessian of p = prod w)."""
    prefix, suffix = np.ones_like(w), np.ones_like(w)  # prod_(k<l) w_k and prod_(k>l) w_k
    d_prefix, d_suffix = np.zeros_like(w), np.zeros_like(w)  # their derivatives along t
    for k in range(1, w.shape[1]):
        prefix[:, k] = prefix[:, k - 1] * w[:, k - 1]
        d_prefix[:, k] = d_prefix[:, k - 1] * w[:, k - 1] + prefix[:, k - 1] * t[:, k - 1]
        r = w.shape[1] - 1 - k
        suffix[:, r] = suffix[:, r + 1] * w[:, r + 1]
        d_suffix[:, r] = d_suffix[:, r + 1] * w[:, r + 1] + suffix[:, r + 1] * t[:, r + 1]
    grad = prefix * suffix
    b_t = d_prefix * suffix + prefix * d_suffix
    eps = prefix[:, -1] * w[:, -1] - phi
    curvature = grad * (grad * t).sum(axis=1, keepdims=True) + eps[:, None] * b_t
    return t - eta[:, None] * curvature


def chain_orbit_fields(weights, eta, phi: float, at_budget, n_steps: int, tol: float,
                       divergence_norm: float) -> dict[str, np.ndarray]:
    """orbit_fields of chain runs from their final weights [N, L], step sizes eta [N]."""
    eta = np.asarray(eta, dtype=np.float64)
    depth = weights.shape[1]

    def step(z, runs):
        return deep_theory.chain_gd_step(z, eta[runs], phi)

    def tangent_map(z, t, runs):
        return chain_tangent_map(z, t, eta[runs], phi)

    # a fixed start off the balanced line and off every coordinate axis; (0.6, 0.8) at depth 2, as the shallow net's
    w0 = np.array([0.6, 0.8]) if depth == 2 else np.linspace(1.0, 2.0, depth)
    return orbit_fields(np.asarray(weights, dtype=np.float64), step, tangent_map, w0, at_budget, n_steps, tol,
                        divergence_norm)


def sweep_orbit_records(grid, runs, outcome: np.ndarray, n_steps: int, tol: float) -> dict[str, np.ndarray]:
    """orbit_period and lyapunov [n_eta, n_scale] of a GD sweep (shallow net or chain), from its raw runs and
    outcome codes (those at max_steps are analysed)."""
    from shallownet.sweep.chain import ChainGrid
    from shallownet.sweep.engine import MAX_STEPS

    eta, _ = grid.runs()
    at_budget = outcome.reshape(-1) == MAX_STEPS
    rule = grid.rule
    if isinstance(grid, ChainGrid):
        fields = chain_orbit_fields(runs.weights, eta, grid.phi, at_budget, n_steps, tol, rule.divergence_norm)
    else:
        fields = shallow_orbit_fields(runs.residual, runs.norm, eta, grid.phi, at_budget, n_steps, tol,
                                      rule.divergence_norm)
    return {name: values.reshape(grid.shape) for name, values in fields.items()}


def orbit_summary(recs: dict, n_steps: int) -> dict:
    """For summary.json: how many runs were analysed, the periods found and how many have a positive exponent."""
    period, exponent = recs["orbit_period"], recs["lyapunov"]
    analysed = period != NOT_ANALYSED
    found = np.unique(period[analysed & (period > 0)], return_counts=True)
    with np.errstate(invalid="ignore"):
        chaotic = analysed & (period == 0) & (exponent > 0)
    return {"steps_after_budget": n_steps, "analysed": int(analysed.sum()),
            "periods": {str(p): int(n) for p, n in zip(*found, strict=True)},
            "no_period_found": int((analysed & (period == 0)).sum()),
            "no_period_and_positive_lyapunov": int(chaotic.sum())}
