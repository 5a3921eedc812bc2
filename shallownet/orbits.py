"""Orbits of GD on the width-1 shallow net m = a b, loss 1/2 (a b - Phi)^2 (numpy only).

The GD map is F(a, b) = (a - eta r b, b - eta r a), r = a b - Phi. Its one-step Jacobian is

    J = [[1 - eta b^2, -eta (r + a b)], [-eta (r + a b), 1 - eta a^2]]

(d r / d a = b, d r / d b = a). All functions broadcast over arrays of starts and step sizes, so a whole
bifurcation diagram is one call.

Period-2 orbits, exactly. In u = a + b, v = a - b the map is diagonal:

    u' = u (1 - eta r),    v' = v (1 + eta r),    r = (u^2 - v^2)/4 - Phi.

If z = (a, b) has period 2 with residuals r0, r1 and u != 0, v != 0, then (1 - eta r0)(1 - eta r1) = 1 and
(1 + eta r0)(1 + eta r1) = 1; their difference gives r0 + r1 = 0 and then eta^2 r0^2 = 0, i.e. a fixed point.
So every period-2 orbit lies on one of the two invariant lines:

* balanced, a = b = x:      x' = g(x) = x (1 - eta (x^2 - Phi)),
* anti-balanced, a = -b = y: y' = h(y) = y (1 - eta (y^2 + Phi)).

On each line the period-2 points are the real roots of the degree-9 polynomial g(g(x)) - x divided by the
fixed-point factor g(x) - x = -eta x (x^2 - Phi) (resp. h(h(y)) - y by -eta y (y^2 + Phi)): a degree-6
polynomial, solved with numpy.roots and polished by Newton steps. At v = 0 (resp. u = 0) the Jacobian in
(u, v) is diagonal, so the two-step multipliers are g'(x0) g'(x1) along the line and, across it,
(1 + eta r0)(1 + eta r1) on a = b, (1 - eta r0)(1 - eta r1) on a = -b; `period_two_orbits` reports the largest
modulus of the eigenvalues of J(z1) J(z0).
"""

from typing import NamedTuple

import numpy as np

DIVERGED = 1e12  # |a|^2 + |b|^2 above this (or a non-finite value) counts as divergence


class Orbit(NamedTuple):
    z: np.ndarray  # [keep, *shape, 2] the last `keep` iterates (a, b); NaN for diverged runs
    diverged: np.ndarray  # [*shape] bool


class PeriodTwo(NamedTuple):
    points: np.ndarray  # [n, 2, 2]: orbit k is points[k, 0] -> points[k, 1] -> points[k, 0], each (a, b)
    multiplier: np.ndarray  # [n] largest |eigenvalue| of J(z1) J(z0); < 1: the orbit is stable


def gd_step(a, b, phi, eta):
    """One GD step, elementwise."""
    r = a * b - phi
    return a - eta * r * b, b - eta * r * a


def jacobian(a, b, phi, eta) -> np.ndarray:
    """The closed-form one-step Jacobian of F at (a, b), shape [*shape, 2, 2]."""
    a, b, phi, eta = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (a, b, phi, eta)))
    r = a * b - phi
    off = -eta * (r + a * b)
    return np.stack([np.stack([1 - eta * b * b, off], -1), np.stack([off, 1 - eta * a * a], -1)], -2)


def _start(a0, b0, phi, eta):
    a, b, phi, eta = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (a0, b0, phi, eta)))
    return a.copy(), b.copy(), phi, eta


def _diverged(a, b):
    norm = a * a + b * b
    return ~np.isfinite(norm) | (norm > DIVERGED)


def gd_orbit(a0, b0, phi, eta, n_steps: int, keep: int) -> Orbit:
    """Iterate F n_steps times from (a0, b0) (broadcast together) and keep the last `keep` iterates.

    A run whose |a|^2 + |b|^2 passes 1e12 (or turns non-finite) is frozen as NaN and flagged; the loop stops
    early once every run has diverged.
    """
    if not 1 <= keep <= n_steps:
        raise ValueError(f"need 1 <= keep <= n_steps, got keep={keep}, n_steps={n_steps}")
    a, b, phi, eta = _start(a0, b0, phi, eta)
    z = np.full((keep, *a.shape, 2), np.nan)
    dead = np.zeros(a.shape, dtype=bool)
    for t in range(n_steps):
        with np.errstate(over="ignore", invalid="ignore"):
            a, b = gd_step(a, b, phi, eta)
            dead |= _diverged(a, b)
        a, b = np.where(dead, np.nan, a), np.where(dead, np.nan, b)
        if dead.all():
            break
        slot = t - (n_steps - keep)
        if slot >= 0:
            z[slot, ..., 0], z[slot, ..., 1] = a, b
    z[:, dead] = np.nan
    return Orbit(z, dead)


def orbit_periods(z: np.ndarray, tol: float, max_period: int = 64) -> np.ndarray:
    """Smallest p in 1..max_period with |z_{t+p} - z_t| <= tol (1 + |z_t|) for every t of the tail, per run.

    z: [keep, *shape, 2] as from gd_orbit. Only p <= keep // 2 are tried (each needs at least p comparisons).
    Returns an int array [*shape]; 0 where no period was found (chaos, not settled yet, or diverged).
    """
    keep = z.shape[0]
    flat = z.reshape(keep, -1, z.shape[-1])
    size = np.linalg.norm(flat, axis=-1)
    period = np.zeros(flat.shape[1], dtype=int)
    with np.errstate(invalid="ignore"):
        for p in range(1, min(max_period, keep // 2) + 1):
            # the last comparison first: it rules out most runs, and only the rest get the whole tail checked
            last = np.linalg.norm(flat[-1] - flat[-1 - p], axis=-1) <= tol * (1 + size[-1 - p])
            runs = np.flatnonzero((period == 0) & last)
            gap = np.linalg.norm(flat[p:, runs] - flat[:-p, runs], axis=-1)
            period[runs[np.all(gap <= tol * (1 + size[:-p, runs]), axis=0)]] = p
    return period.reshape(z.shape[1:-1])


def orbit_period(z: np.ndarray, tol: float, max_period: int = 64) -> int | None:
    """orbit_periods for one run (z: [keep, 2]); None where no period was found."""
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"orbit_period takes the iterates of one run, shape [keep, 2]; got {z.shape}")
    p = int(orbit_periods(z, tol, max_period))
    return p or None


def lyapunov(a0, b0, phi, eta, n_steps: int, burn: int = 0) -> np.ndarray:
    """Finite-time Lyapunov exponent (1/n_steps) sum_t log |J_t w_t|, w renormalised to 1 every step.

    The first `burn` steps move the point only (the transient); the tangent vector w starts at (0.6, 0.8),
    off both invariant lines. NaN for runs that diverge.
    """
    if n_steps < 1 or burn < 0:
        raise ValueError(f"need n_steps >= 1 and burn >= 0, got n_steps={n_steps}, burn={burn}")
    a, b, phi, eta = _start(a0, b0, phi, eta)
    dead = np.zeros(a.shape, dtype=bool)
    w = np.stack(np.broadcast_arrays(0.6, 0.8, a)[:2], -1).astype(np.float64)
    total = np.zeros(a.shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(burn):
            a, b = gd_step(a, b, phi, eta)
            dead |= _diverged(a, b)
        for _ in range(n_steps):
            w = np.einsum("...ij,...j->...i", jacobian(a, b, phi, eta), w)
            growth = np.linalg.norm(w, axis=-1)
            total += np.log(growth)
            w = w / growth[..., None]
            a, b = gd_step(a, b, phi, eta)
            dead |= _diverged(a, b)
    return np.where(dead, np.nan, total / n_steps)


def _period_two_on_line(sign: float, phi: float, eta: float) -> np.ndarray:
    """Real x with G(G(x)) = x != G(x), G(x) = x (1 - eta (x^2 - sign phi)): sign +1 balanced, -1 anti."""
    g = np.array([-eta, 0.0, 1 + sign * eta * phi, 0.0])  # G as coefficients, highest power first
    gg = np.polyval(g, np.poly1d(g)).coeffs  # G(G(x)), degree 9
    fixed = np.array([-eta, 0.0, sign * eta * phi, 0.0])  # G(x) - x
    quotient, rest = np.polydiv(np.polysub(gg, [1.0, 0.0]), fixed)
    roots = np.roots(quotient)
    x = roots[np.abs(roots.imag) <= 1e-7 * (1 + np.abs(roots))].real
    d = np.polyder(quotient)
    for _ in range(3):
        x = x - np.polyval(quotient, x) / np.polyval(d, x)
    return x


def period_two_orbits(phi: float, eta: float) -> PeriodTwo:
    """All period-2 orbits of F (module docstring), each listed once, with its stability multiplier."""
    if not (eta > 0 and np.isfinite(eta) and np.isfinite(phi)):
        raise ValueError(f"need eta > 0 and finite phi, got eta={eta}, phi={phi}")
    orbits = []
    for sign in (1.0, -1.0):
        for x in _period_two_on_line(sign, phi, eta):
            z0 = np.array([x, sign * x])
            z1 = np.array(gd_step(z0[0], z0[1], phi, eta))
            if not any(np.allclose(z1, o[0], rtol=1e-9, atol=1e-12) for o in orbits):  # its partner is in
                orbits.append((z0, z1))
    points = np.array(orbits).reshape(-1, 2, 2)
    multiplier = np.array([np.abs(np.linalg.eigvals(jacobian(*z1, phi, eta) @ jacobian(*z0, phi, eta))).max()
                           for z0, z1 in points])
    return PeriodTwo(points, multiplier)
