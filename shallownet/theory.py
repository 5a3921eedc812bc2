"""Exact formulas for the depth-2 scalar linear net (../shared/theory.md), as pure float64 functions.

Everything here works on Python floats and on numpy arrays alike (elementwise), and depends on
nothing else in the package: it is the oracle the simulations are tested against.
Notation: eps = a.b - phi (residual), lam = |a|^2 + |b|^2 (norm), Q_i = a_i^2 - b_i^2 (imbalance),
Qn = |a + b| |a - b| (imbalance magnitude), U = |a + b|^2, V = |a - b|^2.
"""

from __future__ import annotations

import numpy as np

STABLE = "stable"
EDGE_OF_STABILITY = "edge_of_stability"
NO_STABLE_MINIMUM = "no_stable_minimum"


# --- state of a point (theory.md section 2) ---------------------------------------------------------

def state(a, b, phi: float) -> dict:
    """eps, lam, Q_i, Q and Qn of the point (a, b) (1-D arrays of equal length)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    q_per_unit = a * a - b * b
    return {
        "residual": float(a @ b - phi),
        "norm": float(a @ a + b @ b),
        "imbalance_per_unit": q_per_unit,
        "imbalance": float(q_per_unit.sum()),
        "imbalance_norm": float(np.linalg.norm(a + b) * np.linalg.norm(a - b)),
    }


def hessian_eigenvalues(eps, lam, phi):
    """(s_plus, s_minus): the two eigenvalues of the Hessian of L that are not +-eps."""
    root = np.sqrt(lam * lam + 4.0 * eps * (3.0 * eps + 2.0 * phi))
    return (lam + root) / 2.0, (lam - root) / 2.0


def sharpness(eps, lam, phi):
    """Largest Hessian eigenvalue s_plus (>= |eps| whenever phi >= 0)."""
    return hessian_eigenvalues(eps, lam, phi)[0]


def hessian(a, b, phi: float) -> np.ndarray:
    """The dense 2d x 2d Hessian of L(a, b) = 1/2 (a.b - phi)^2, parameters ordered (a, b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    eps = a @ b - phi
    eye = np.eye(a.size)
    return np.block([[np.outer(b, b), eps * eye + np.outer(b, a)], [eps * eye + np.outer(a, b), np.outer(a, a)]])


def imbalance_norm_from(eps, lam, phi):
    """Qn from the identity lam^2 = 4 (eps + phi)^2 + Qn^2."""
    return np.sqrt(np.maximum(lam * lam - 4.0 * (eps + phi) ** 2, 0.0))


# --- one GD step (section 3) --------------------------------------------------------------------------

def gd_step(eps, lam, imbalance, eta, phi):
    """Exact one-step update of (eps, lam, Q) under GD with step eta; Q may be any of Q_i, Q, M."""
    eps_next = eps * (1.0 - eta * lam + eta * eta * eps * (eps + phi))
    lam_next = (1.0 + eta * eta * eps * eps) * lam - 4.0 * eta * eps * (eps + phi)
    imbalance_next = imbalance_factor_step(eps, eta) * imbalance
    return eps_next, lam_next, imbalance_next


def imbalance_factor_step(eps, eta):
    """The factor 1 - eta^2 eps^2 by which one GD step multiplies every Q_i."""
    return 1.0 - eta * eta * eps * eps


def loss_step_factor(eps, lam, eta, phi):
    """L' / L = (1 - eta lam + eta^2 eps (eps + phi))^2."""
    return (1.0 - eta * lam + eta * eta * eps * (eps + phi)) ** 2


# --- the exact two-number recursion ------------------------------------------------------------------

def uv_from_ab(a, b):
    """U = |a + b|^2, V = |a - b|^2: all a trajectory depends on, for any width."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float((a + b) @ (a + b)), float((a - b) @ (a - b))


def state_from_uv(u, v, phi):
    """(eps, lam, Qn) from (U, V)."""
    return (u - v) / 4.0 - phi, (u + v) / 2.0, np.sqrt(u * v)


def uv_step(u, v, eta, phi):
    """One GD step of the two-number recursion U' = (1 - eta eps)^2 U, V' = (1 + eta eps)^2 V."""
    eps = (u - v) / 4.0 - phi
    return (1.0 - eta * eps) ** 2 * u, (1.0 + eta * eps) ** 2 * v


# --- limits (sections 4 and 5) ------------------------------------------------------------------------

def gf_solution_sharpness(imbalance_norm, phi):
    """lam = S at the minimum that gradient flow reaches from a point with imbalance magnitude Qn."""
    return np.sqrt(4.0 * phi * phi + imbalance_norm * imbalance_norm)


def gd_limit_norm(imbalance_norm0, factor, phi):
    """lam_GD = S_GD = sqrt(4 phi^2 + P^2 Qn0^2) for GD that converged with product P."""
    return gf_solution_sharpness(factor * imbalance_norm0, phi)


def gf_limit(a0, b0, phi: float):
    """Closed-form gradient-flow limit (a_GF, b_GF) from (a0, b0); needs a0 != -b0 when phi > 0."""
    a0, b0 = np.asarray(a0, dtype=np.float64), np.asarray(b0, dtype=np.float64)
    u0, v0 = a0 + b0, a0 - b0
    uu, vv = u0 @ u0, v0 @ v0
    # x = (-2 phi + sqrt(4 phi^2 + U V)) / V, rationalised: no cancellation when U V << phi^2, and V = 0 works
    x = uu / (2.0 * phi + np.sqrt(4.0 * phi * phi + uu * vv))
    if not np.isfinite(x) or x <= 0.0:
        raise ValueError("gradient flow from a0 = -b0 (phi > 0) goes to the saddle at 0, not a minimum")
    root = np.sqrt(x)
    return (u0 / root + v0 * root) / 2.0, (u0 / root - v0 * root) / 2.0


# --- step-size conditions and rates (sections 5 and 6) ------------------------------------------------

def theorem1_max_lr(eps0, lam0, phi):
    """The paper's Theorem-1 bound: GD converges linearly for 0 < eta < this value."""
    return np.minimum(1.0 / (2.0 * np.abs(eps0)), 2.0 / np.sqrt(lam0 * lam0 + 4.0 * phi * phi))


def local_rate(eta, lam_inf):
    """|eps_{t+1} / eps_t| near the limit: |1 - eta lam_inf|."""
    return np.abs(1.0 - eta * lam_inf)


def steps_to_tolerance(eps0, tol, eta, lam_inf):
    """Approximate steps to reach |eps| <= tol at the local rate (inf when the rate is >= 1)."""
    rate = local_rate(eta, lam_inf)
    with np.errstate(divide="ignore"):
        return np.where(rate < 1.0, np.log(np.abs(eps0) / tol) / -np.log(rate), np.inf)


def regime(eta: float, lam_gf: float, phi: float) -> str:
    """Which step-size regime of theory.md section 6 eta falls in (phi > 0)."""
    if eta * phi >= 1.0:
        return NO_STABLE_MINIMUM
    if eta * lam_gf >= 2.0:
        return EDGE_OF_STABILITY
    return STABLE


def first_order_log_factor(eps0, lam0, eta):
    """First-order size of the regularisation: log|P| ~ -eta eps0^2 / (lam0 (2 - eta lam0))."""
    return -eta * eps0 * eps0 / (lam0 * (2.0 - eta * lam0))
