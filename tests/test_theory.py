"""theory.md's formulas for GD against the d-dimensional simulation (GradientDescent on ScalarLinearNet).

Property-based over random initialisations, widths, targets phi and step sizes; every check is to
round-off unless its comment says otherwise. No Lightning here: these are the oracles themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shallownet import theory
from shallownet.model import ScalarLinearNet
from shallownet.optim import GradientDescent

SETTINGS = settings(max_examples=40, deadline=None)


# --- the simulation ---------------------------------------------------------------------------------

def simulate_gd(a0, b0, eta: float, phi: float, max_steps: int,
                tol: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(a_t, b_t) for t = 0..T, stopping at max_steps or once |eps| <= tol (checked before each step)."""
    net = ScalarLinearNet(torch.as_tensor(a0, dtype=torch.float64), torch.as_tensor(b0, dtype=torch.float64))
    opt = GradientDescent(net.parameters(), lr=eta)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (net.product() - phi) ** 2
        loss.backward()
        return loss

    a_path, b_path = [net.a.detach().clone()], [net.b.detach().clone()]
    for _ in range(max_steps):
        if tol is not None and abs(float(a_path[-1] @ b_path[-1]) - phi) <= tol:
            break
        opt.step(closure)
        a_path.append(net.a.detach().clone())
        b_path.append(net.b.detach().clone())
    return torch.stack(a_path).numpy(), torch.stack(b_path).numpy()


def trajectory(a: np.ndarray, b: np.ndarray, phi: float) -> dict[str, np.ndarray]:
    """eps, lam, Q_i (rows: time), Qn along a simulated path (inf/nan once a run has diverged)."""
    with np.errstate(all="ignore"):
        return {
            "eps": np.einsum("ti,ti->t", a, b) - phi,
            "lam": (a * a + b * b).sum(axis=1),
            "q": a * a - b * b,
            "qn": np.linalg.norm(a + b, axis=1) * np.linalg.norm(a - b, axis=1),
        }


# --- strategies -------------------------------------------------------------------------------------

@st.composite
def initialisations(draw, max_width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    width = draw(st.integers(1, max_width))
    entries = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False)
    a0 = np.array(draw(st.lists(entries, min_size=width, max_size=width)))
    b0 = np.array(draw(st.lists(entries, min_size=width, max_size=width)))
    return a0, b0


phis = st.floats(0.25, 2.0)
# step sizes as a fraction of the Theorem-1 bound, where GD provably converges
bound_fractions = st.floats(0.2, 0.95)


def theorem1_eta(a0, b0, phi: float, fraction: float) -> float:
    s = theory.state(a0, b0, phi)
    with np.errstate(divide="ignore"):  # eps0 = 0: the bound is the other term
        return fraction * float(theory.theorem1_max_lr(s["residual"], s["norm"], phi))


def assume_away_from_saddle(a0, b0) -> None:
    """a0 near -b0 starts next to the saddle at 0: GD still converges, but only after very many steps."""
    u, _ = theory.uv_from_ab(a0, b0)
    assume(u > 0.1)


# --- section 2: Hessian spectrum and the norm identity ---------------------------------------------

@SETTINGS
@given(initialisations(), phis)
def test_hessian_spectrum_and_sharpness(init, phi):
    a, b = init
    s = theory.state(a, b, phi)
    eigs = np.linalg.eigvalsh(theory.hessian(a, b, phi))
    s_plus, s_minus = theory.hessian_eigenvalues(s["residual"], s["norm"], phi)
    expected = np.sort(np.concatenate([[s_plus, s_minus], np.full(a.size - 1, s["residual"]),
                                       np.full(a.size - 1, -s["residual"])]))
    scale = 1.0 + s["norm"] + abs(s["residual"])
    np.testing.assert_allclose(eigs, expected, rtol=0, atol=1e-12 * scale)
    assert abs(theory.sharpness(s["residual"], s["norm"], phi) - eigs[-1]) <= 1e-12 * scale
    lam_from_identity = math.sqrt(4 * (s["residual"] + phi) ** 2 + s["imbalance_norm"] ** 2)
    assert abs(lam_from_identity - s["norm"]) <= 1e-12 * scale
    assert abs(float(theory.imbalance_norm_from(s["residual"], s["norm"], phi)) - s["imbalance_norm"]) <= 1e-6 * scale


# --- section 3: the exact recursions -----------------------------------------------------------------

@SETTINGS
@given(initialisations(), phis, st.floats(1e-3, 1.5))
def test_one_gd_step_matches_the_recursions(init, phi, eta):
    a0, b0 = init
    a, b = simulate_gd(a0, b0, eta, phi, max_steps=1)
    tr = trajectory(a, b, phi)
    eps, lam, q = theory.gd_step(tr["eps"][0], tr["lam"][0], tr["q"][0], eta, phi)
    scale = (1 + tr["lam"][0]) ** 2 * (1 + abs(tr["eps"][0]))  # the size of the terms that cancel
    assert abs(eps - tr["eps"][1]) <= 1e-14 * scale
    assert abs(lam - tr["lam"][1]) <= 1e-14 * scale
    np.testing.assert_allclose(q, tr["q"][1], rtol=0, atol=1e-14 * scale)
    factor = abs(theory.imbalance_factor_step(tr["eps"][0], eta))
    assert abs(factor * tr["qn"][0] - tr["qn"][1]) <= 1e-14 * scale
    loss0, loss1 = 0.5 * tr["eps"][0] ** 2, 0.5 * tr["eps"][1] ** 2
    assert abs(loss0 * theory.loss_step_factor(tr["eps"][0], tr["lam"][0], eta, phi) - loss1) <= 1e-14 * scale ** 2


@SETTINGS
@given(initialisations(), phis, bound_fractions)
def test_uv_recursion_equals_the_d_dimensional_simulation(init, phi, fraction):
    a0, b0 = init
    eta = theorem1_eta(a0, b0, phi, fraction)
    a, b = simulate_gd(a0, b0, eta, phi, max_steps=40)
    tr = trajectory(a, b, phi)
    u, v = theory.uv_from_ab(a0, b0)
    for t in range(len(a)):
        eps, lam, qn = theory.state_from_uv(u, v, phi)
        scale = 1 + tr["lam"][t]
        assert abs(eps - tr["eps"][t]) <= 1e-11 * scale
        assert abs(lam - tr["lam"][t]) <= 1e-11 * scale
        assert abs(qn - tr["qn"][t]) <= 1e-11 * scale
        u, v = theory.uv_step(u, v, eta, phi)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.2, 9.0), st.floats(0.0, 9.0), phis, bound_fractions,
       st.integers(0, 2**31 - 1))
def test_width_invariance(width1, width2, u0, v0, phi, fraction, seed):
    """Inits of different widths with the same |a0 + b0|^2, |a0 - b0|^2 have identical eps, lam, Qn."""
    rng = np.random.default_rng(seed)
    inits = []
    for width in (width1, width2):
        du, dv = rng.normal(size=(2, width))
        assume(np.linalg.norm(du) > 1e-3 and np.linalg.norm(dv) > 1e-3)
        u, v = math.sqrt(u0) * du / np.linalg.norm(du), math.sqrt(v0) * dv / np.linalg.norm(dv)
        inits.append(((u + v) / 2, (u - v) / 2))
    eta = theorem1_eta(*inits[0], phi, fraction)
    runs = [trajectory(*simulate_gd(a0, b0, eta, phi, max_steps=60), phi) for a0, b0 in inits]
    for key in ("eps", "lam", "qn"):
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=0, atol=1e-11 * (1 + runs[0]["lam"].max()))


@SETTINGS
@given(initialisations(), phis, st.floats(1e-3, 1.2))
def test_a_plus_b_and_a_minus_b_keep_their_directions(init, phi, eta):
    a0, b0 = init
    u0, v0 = a0 + b0, a0 - b0
    assume(np.linalg.norm(u0) > 1e-3 and np.linalg.norm(v0) > 1e-3)
    a, b = simulate_gd(a0, b0, eta, phi, max_steps=30)
    assume(np.isfinite(a).all() and np.isfinite(b).all() and np.abs(a).max() < 1e6)
    for w0, w in ((u0, a + b), (v0, a - b)):
        norms = np.linalg.norm(w, axis=1)
        keep = norms > 1e-6 * np.linalg.norm(w0)  # a direction is defined while the vector is not ~0
        cosines = (w[keep] @ w0) / (norms[keep] * np.linalg.norm(w0))
        np.testing.assert_allclose(np.abs(cosines), 1.0, rtol=0, atol=1e-12)


@SETTINGS
@given(st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=8), phis, st.floats(1e-3, 1.5))
def test_balanced_init_stays_balanced(a0, phi, eta):
    a0 = np.array(a0)
    a, b = simulate_gd(a0, a0.copy(), eta, phi, max_steps=50)
    assert np.array_equal(a, b, equal_nan=True)  # a' = a - eta eps b and b' = b - eta eps a are the same operations


@SETTINGS
@given(st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=8), phis, st.floats(1e-3, 1.0))
def test_antibalanced_init_never_reaches_a_minimum(a0, phi, eta):
    """a0 = -b0: a.b = -|a|^2 <= 0 forever, so eps <= -phi: GD heads for the saddle at 0."""
    a0 = np.array(a0)
    a, b = simulate_gd(a0, -a0, eta, phi, max_steps=200)
    tr = trajectory(a, b, phi)
    assert np.all(tr["eps"][np.isfinite(tr["eps"])] <= -phi)


# --- section 5: where GD ends ------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(initialisations(), phis, bound_fractions)
def test_gd_limit_is_sqrt_4phi2_plus_p2_qn02(init, phi, fraction):
    a0, b0 = init
    assume_away_from_saddle(a0, b0)
    eta = theorem1_eta(a0, b0, phi, fraction)
    a, b = simulate_gd(a0, b0, eta, phi, max_steps=20_000, tol=1e-12)
    tr = trajectory(a, b, phi)
    assert abs(tr["eps"][-1]) <= 1e-12, "Theorem 1: GD converges for eta below the bound"
    factors = np.cumprod(np.concatenate([[1.0], theory.imbalance_factor_step(tr["eps"][:-1], eta)]))
    scale = 1 + tr["lam"].max()
    # along the way: Qn_t = |P_t| Qn0 and Q_i(t) = P_t Q_i(0) for every unit, at every step
    np.testing.assert_allclose(tr["qn"], np.abs(factors) * tr["qn"][0], rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(tr["q"], factors[:, None] * tr["q"][0], rtol=0, atol=1e-11 * scale)
    # at the end (|eps| <= 1e-12 moves lam by O(1e-12)): lam = S = sqrt(4 phi^2 + P^2 Qn0^2)
    lam_gd = float(theory.gd_limit_norm(tr["qn"][0], factors[-1], phi))
    assert abs(tr["lam"][-1] - lam_gd) <= 1e-10 * scale
    top = np.linalg.eigvalsh(theory.hessian(a[-1], b[-1], phi))[-1]
    assert abs(top - lam_gd) <= 1e-10 * scale


@SETTINGS
@given(initialisations(), phis, bound_fractions)
def test_gd_ends_flatter_than_gf(init, phi, fraction):
    """lam_GD < lam_GF whenever Qn0 > 0 and eta is below the Theorem-1 bound (and eps0 != 0)."""
    a0, b0 = init
    assume_away_from_saddle(a0, b0)
    s = theory.state(a0, b0, phi)
    eta = theorem1_eta(a0, b0, phi, fraction)
    # keep the gap lam_GF - lam_GD ~ eta^2 eps0^2 Qn0^2 / lam well above the 1e-12 convergence tolerance
    assume(s["imbalance_norm"] > 0.1 and eta * abs(s["residual"]) > 1e-2)
    a, b = simulate_gd(a0, b0, eta, phi, max_steps=20_000, tol=1e-12)
    lam_gd = trajectory(a, b, phi)["lam"][-1]
    lam_gf = float(theory.gf_solution_sharpness(s["imbalance_norm"], phi))
    assert lam_gd < lam_gf
    assert eta * lam_gf < 2  # theory.md: the Theorem-1 condition implies eta lam_GF < 2


@SETTINGS
@given(initialisations(), phis, bound_fractions)
def test_linear_convergence_at_rate_one_minus_eta_lam(init, phi, fraction):
    """|eps_{t+1} / eps_t| -> |1 - eta lam_inf|; the ratio differs from it by O(eta |eps|)."""
    a0, b0 = init
    assume_away_from_saddle(a0, b0)
    eta = theorem1_eta(a0, b0, phi, fraction)
    a, b = simulate_gd(a0, b0, eta, phi, max_steps=20_000, tol=1e-8)
    tr = trajectory(a, b, phi)
    assume(len(tr["eps"]) >= 3 and abs(tr["eps"][-2]) > 1e-10)  # converged in a step or two: no rate to see
    ratio = abs(tr["eps"][-1] / tr["eps"][-2])
    assert abs(ratio - float(theory.local_rate(eta, tr["lam"][-1]))) <= 1e-5
    # and the step count is what the rate predicts, within a few steps of the transient
    predicted = float(theory.steps_to_tolerance(tr["eps"][0], 1e-8, eta, tr["lam"][-1]))
    assert len(tr["eps"]) - 1 <= 2 * predicted + 50


# --- section 4: the closed-form GF limit, and the regimes --------------------------------------------

@SETTINGS
@given(initialisations(), phis)
def test_gf_limit_is_a_minimum_with_the_same_imbalance(init, phi):
    a0, b0 = init
    assume_away_from_saddle(a0, b0)
    a, b = theory.gf_limit(a0, b0, phi)
    scale = 1 + float(a0 @ a0 + b0 @ b0)
    assert abs(float(a @ b) - phi) <= 1e-12 * scale
    m0, m = np.outer(a0, a0) - np.outer(b0, b0), np.outer(a, a) - np.outer(b, b)
    np.testing.assert_allclose(m, m0, rtol=0, atol=1e-12 * scale)  # GF conserves M, hence every Q_i, Q, Qn
    qn0 = theory.state(a0, b0, phi)["imbalance_norm"]
    assert abs(float(a @ a + b @ b) - float(theory.gf_solution_sharpness(qn0, phi))) <= 1e-12 * scale


@pytest.mark.parametrize("offset", [1e-5, 1e-9, 0.0])
def test_gf_limit_nearly_balanced(offset):
    """U0 V0 << phi^2: the rationalised formula for x has no cancellation (and V0 = 0 needs no special case)."""
    a0, b0 = np.array([1.0, 0.5]), np.array([1.0, 0.5 + offset])
    a, b = theory.gf_limit(a0, b0, 1.0)
    assert abs(float(a @ b) - 1.0) <= 1e-12


def test_regimes_follow_section_6():
    lam_gf, phi = 2.5, 1.0
    assert theory.regime(0.5, lam_gf, phi) == theory.STABLE
    assert theory.regime(0.9, lam_gf, phi) == theory.EDGE_OF_STABILITY
    assert theory.regime(1.0, lam_gf, phi) == theory.NO_STABLE_MINIMUM
