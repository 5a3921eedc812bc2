"""Deep linear nets (extensions/deep_linear.py, deep_data.py, deep_monitor.py) against theory.md section 8
(shallownet/deep_theory.py): one-step imbalance identities, gradient-flow invariants and limits, least
sharpness, GD against GF, depth 2 against the shallow net, the data, the registry entries and the monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from extensions import deep_data, deep_kinds, deep_linear
from extensions.deep_linear import ScalarChain
from shallownet import deep_theory as dt
from shallownet import quantities as shallow
from shallownet import registry, theory
from shallownet.curvature import dense_hessian
from shallownet.data import effective_phi, regression_points
from shallownet.flow import DormandPrince
from shallownet.losses import half_mse, half_sum_mse
from shallownet.model import ScalarLinearNet, initial_vectors
from shallownet.optim import GradientDescent

F64 = torch.float64
PROPERTY = settings(max_examples=20, deadline=None)
SCHEMA = {"deep_scalar_linear": deep_kinds.DeepScalarLinearConfig, "scalar_chain": deep_kinds.ScalarChainConfig,
          "deep_linear": deep_kinds.DeepLinearConfig}


# --- helpers ------------------------------------------------------------------------------------------

def make_config(kind: str, model: dict | None = None, data: dict | None = None):
    """A run config holding the model section of `kind` (schema defaults + overrides) and a data section."""
    section = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(SCHEMA[kind]), model or {}))
    if kind == "deep_linear":
        defaults = OmegaConf.to_container(OmegaConf.structured(deep_kinds.MatrixRegressionConfig))
        data = {"kind": "matrix_regression", **defaults, **(data or {})}
    else:
        data = {"kind": "points", "n_points": 1, "noise": 0.0, "seed": 0, **(data or {})}
    return OmegaConf.create({"model": {"kind": kind, **section}, "data": data})


def load_data(cfg, dtype=F64) -> registry.FullBatchData:
    if cfg.data.kind == "matrix_regression":
        return deep_data.load_matrix_regression(cfg, dtype)
    x, y = regression_points(cfg.data.n_points, cfg.model.phi, cfg.data.noise, cfg.data.seed, dtype=dtype)
    return registry.FullBatchData(x, y, target=effective_phi(x, y))


def build(kind: str, model: dict | None = None, data: dict | None = None, dtype=F64):
    """(model, x, y, loss_fn) built through the registry entry of `kind`."""
    cfg = make_config(kind, model, data)
    entry = registry.model_kind(kind)
    batch = load_data(cfg, dtype)
    loss_fn = {"half_mse": half_mse, "half_sum_mse": half_sum_mse}[entry.loss]
    return entry.build(cfg, batch), batch.x, batch.y, loss_fn


def closure_for(model, x, y, loss_fn, holder: list):
    def closure():
        holder[0].zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    return closure


def matrices(model) -> list[torch.Tensor]:
    return [w.detach().clone() for w in model.matrices()]


def max_abs(tensors) -> float:
    return max(float(t.abs().max()) for t in tensors)


def end_gradient(model, x, y) -> torch.Tensor:
    """dL/dA at the model's end-to-end map A (2-D targets; scalar data as (n, 1))."""
    targets = y if y.dim() == 2 else y[:, None]
    return dt.regression_end_gradient(model.end_to_end().detach(), x, targets)


def chain_gd(w0, eta: float, phi: float, tol: float, max_steps: int, watch=None):
    """GD on a scalar chain by the exact step (numpy; checked against torch GD in
    test_chain_pairwise_factor_is_exact_per_step); watch(w) is called before each step and may return False
    to stop. Returns (w, steps, converged)."""
    w = np.array(w0, dtype=np.float64)
    for step in range(max_steps):
        if abs(np.prod(w) - phi) <= tol:
            return w, step, True
        if watch is not None and watch(w) is False:
            return w, step, False
        w = dt.chain_gd_step(w, eta, phi)
        if not np.all(np.isfinite(w)) or np.abs(w).max() > 1e6:
            return w, step, False
    return w, max_steps, abs(np.prod(w) - phi) <= tol


# --- GD moves every D_l by exactly eta^2 (G_(l+1)^T G_(l+1) - G_l G_l^T) (section 8.1) ----------------

ONE_STEP_CASES = [
    ("deep_scalar_linear", {"depth": 2, "width": 3}, None),
    ("deep_scalar_linear", {"depth": 3, "width": 4}, None),
    ("deep_scalar_linear", {"depth": 4, "width": 2, "phi": 1.5}, {"n_points": 7, "noise": 0.3}),
    ("deep_scalar_linear", {"depth": 5, "width": 1, "init": {"scheme": "imbalanced", "imbalance": [0.3]}}, None),
    ("scalar_chain", {"depth": 3, "phi": -0.8}, None),
    ("scalar_chain", {"depth": 5, "init": {"scale": 1.2, "seed": 3}}, {"n_points": 4, "noise": 0.2}),
    ("deep_linear", {"hidden": [4, 3]}, None),
    ("deep_linear", {"hidden": [2]}, {"d_in": 5, "d_out": 3, "rank": 2, "noise": 0.1}),
    ("deep_linear", {"hidden": [3, 6, 2], "init": {"scheme": "imbalanced", "imbalance": [0.4, -0.2, 0.6]}},
     {"n_samples": 30, "d_in": 4, "d_out": 2, "whiten": True}),
]


@pytest.mark.parametrize("kind, model_cfg, data_cfg", ONE_STEP_CASES)
def test_gd_changes_every_imbalance_by_the_one_step_formula(kind, model_cfg, data_cfg):
    model, x, y, loss_fn = build(kind, model_cfg, data_cfg)
    eta = 0.15
    holder = []
    closure = closure_for(model, x, y, loss_fn, holder)
    holder.append(GradientDescent(model.parameters(), lr=eta))
    for _ in range(4):
        weights = matrices(model)
        closure()
        grads = [g.detach().clone() for g in model.gradient_matrices()]
        # the gradients are those of the end-to-end loss, by the chain rule (the oracle the formula needs)
        oracle = dt.chain_gradients(weights, end_gradient(model, x, y))
        assert max_abs([g - o for g, o in zip(grads, oracle, strict=True)]) <= 1e-13 * max(1.0, max_abs(grads))
        predicted = dt.imbalance_step(weights, grads, eta)
        predicted_trace = dt.imbalance_trace_step(weights, grads, eta)
        holder[0].step(closure)
        after = dt.layer_imbalances(matrices(model))
        size = max(1.0, max_abs([w.T @ w for w in weights] + [w @ w.T for w in weights]))
        assert max_abs([p - m for p, m in zip(predicted, after, strict=True)]) <= 1e-14 * size
        assert np.allclose(predicted_trace, [float(torch.trace(d)) for d in after], rtol=0, atol=1e-13 * size)
        # not vacuous: the eta^2 term moved D_l by far more than round-off
        before = dt.layer_imbalances(weights)
        assert max_abs([a - b for a, b in zip(after, before, strict=True)]) > 1e-6


def test_chain_pairwise_factor_is_exact_per_step():
    rng = np.random.default_rng(0)
    for depth in (2, 3, 4, 6):
        w = rng.uniform(0.3, 1.8, depth) * rng.choice([-1.0, 1.0], depth)
        eta, phi = 0.4, 1.3
        model = ScalarChain(torch.tensor(w), phi=phi)
        x, y = torch.ones(1, 1, dtype=F64), torch.full((1,), phi, dtype=F64)
        holder = []
        closure = closure_for(model, x, y, half_mse, holder)
        holder.append(GradientDescent(model.parameters(), lr=eta))
        holder[0].step(closure)
        after = model.w.detach().numpy()
        assert np.allclose(after, dt.chain_gd_step(w, eta, phi), rtol=0, atol=1e-15)
        predicted = dt.chain_pairwise_imbalance_step(w, eta, phi)
        assert np.allclose(predicted, dt.chain_pairwise_imbalance(after), rtol=0, atol=1e-14)
        # the factor is the one of theory.md 8.2, entry by entry
        eps = np.prod(w) - phi
        i, j = 0, depth - 1
        expected = 1 - eta**2 * eps**2 * np.prod(np.delete(w, [i, j]) ** 2)
        assert dt.chain_pairwise_factor(w, eta, phi)[i, j] == pytest.approx(expected, rel=1e-15)


# --- gradient flow (section 8.1 / 8.2) ----------------------------------------------------------------

def integrate_flow(model, x, y, loss_fn, *, tol: float | None = None, t_stop: float | None = None,
                   max_steps: int = 20_000):
    holder = []
    closure = closure_for(model, x, y, loss_fn, holder)
    flow = DormandPrince(model.parameters(), t_stop=t_stop)  # rtol 1e-10, atol 1e-12
    holder.append(flow)
    for _ in range(max_steps):
        if tol is not None:
            with torch.no_grad():
                if abs(float(model.quantities()["residual"])) <= tol:
                    return flow
        if t_stop is not None and flow.t >= t_stop:
            return flow
        flow.step(closure)
    raise AssertionError("gradient flow did not finish within max_steps")


@pytest.mark.parametrize("kind, model_cfg, data_cfg, t_stop", [
    ("deep_scalar_linear", {"depth": 3, "width": 3, "init": {"seed": 1}}, None, 20.0),
    ("deep_scalar_linear", {"depth": 4, "width": 2, "init": {"scheme": "imbalanced", "imbalance": [0.5, -0.3, 0.2]}},
     {"n_points": 5, "noise": 0.2}, 20.0),
    ("deep_linear", {"hidden": [4, 3], "init": {"scale": 0.7}}, {"n_samples": 40, "d_in": 4, "d_out": 3}, 3.0),
])
def test_gradient_flow_conserves_every_imbalance(kind, model_cfg, data_cfg, t_stop):
    model, x, y, loss_fn = build(kind, model_cfg, data_cfg)
    before = dt.layer_imbalances(matrices(model))
    with torch.no_grad():
        loss0 = float(loss_fn(model(x), y))
    integrate_flow(model, x, y, loss_fn, t_stop=t_stop)
    after = dt.layer_imbalances(matrices(model))
    scale = max(1.0, max_abs(before))
    assert max_abs([a - b for a, b in zip(after, before, strict=True)]) <= 1e-9 * scale
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) < 0.5 * loss0  # the flow went somewhere


@pytest.mark.parametrize("w0, phi", [
    ([1.3, 0.4], 1.0),
    ([-0.9, -1.6], 0.7),
    ([0.6, 1.1, 1.5], 1.0),
    ([1.2, -0.5, -0.8, 1.4], 2.0),
    ([0.7, 0.9, 1.3, 0.6, 1.1], 1.2),
    ([0.8, 1.2, -0.9, 1.5, 0.7], -0.6),
    ([1.4, -0.5, 1.1], 1.0),  # p(0) < 0 < phi: the smallest |w| crosses 0 and flips
])
def test_gradient_flow_ends_at_chain_gf_limit_with_its_sharpness(w0, phi):
    w0 = np.array(w0)
    model = ScalarChain(torch.tensor(w0), phi=phi)
    x, y = torch.ones(1, 1, dtype=F64), torch.full((1,), phi, dtype=F64)
    integrate_flow(model, x, y, half_mse, tol=1e-12)
    w = model.w.detach().numpy()
    pairs0, pairs = dt.chain_pairwise_imbalance(w0), dt.chain_pairwise_imbalance(w)
    assert np.abs(pairs - pairs0).max() <= 1e-9 * max(1.0, np.abs(pairs0).max())
    limit = dt.chain_gf_limit(w0, phi)
    assert np.abs(w - limit).max() <= 1e-8 * max(1.0, np.abs(limit).max())
    s_gf = dt.chain_gf_solution_sharpness(w0, phi)
    assert dt.chain_minimum_sharpness(w) == pytest.approx(s_gf, rel=1e-8)
    top = float(torch.linalg.eigvalsh(dense_hessian(model, half_mse, (x, y)))[-1])
    assert top == pytest.approx(s_gf, rel=1e-8)
    # the limit is a minimum with the conserved differences (theory.md 8.2)
    assert np.prod(limit) == pytest.approx(phi, rel=1e-14)
    assert np.abs(dt.chain_pairwise_imbalance(limit) - pairs0).max() <= 1e-13 * max(1.0, np.abs(pairs0).max())


def test_chain_gf_limit_at_depth_2_is_the_closed_form_and_is_batched():
    rng = np.random.default_rng(4)
    batch = rng.normal(size=(200, 2)) * rng.uniform(0.2, 2.0, size=(200, 1))
    phis = rng.uniform(0.3, 2.0, 200)
    limits = dt.chain_gf_limit(batch, phis)
    for w0, phi, limit in zip(batch, phis, limits, strict=True):
        a, b = theory.gf_limit(w0[:1], w0[1:], phi)  # any sign of p(0): the closed form of section 4
        assert np.allclose(limit, [a[0], b[0]], rtol=1e-13, atol=1e-15)
        assert dt.chain_gf_solution_sharpness(w0, phi) == pytest.approx(
            theory.gf_solution_sharpness(abs(w0[0] ** 2 - w0[1] ** 2), phi), rel=1e-13)
    deep = rng.uniform(0.1, 2.0, size=(50, 5)) * rng.choice([-1.0, 1.0], size=(50, 5))
    batched = dt.chain_gf_limit(deep, 1.5)
    looped = np.array([dt.chain_gf_limit(w, 1.5) for w in deep])
    assert np.array_equal(batched, looped)
    assert np.allclose(np.prod(batched, axis=-1), 1.5, rtol=1e-14)
    # ties on the way to 0 end at a saddle (nan), phi = 0 sends the smallest weight to 0
    assert np.all(np.isnan(dt.chain_gf_limit([1.0, -1.0, 2.0], 1.0)))
    assert np.allclose(dt.chain_gf_limit([1.0, 2.0, -3.0], 0.0), [0.0, math.sqrt(3), -math.sqrt(8)])


def test_chain_hessian_closed_form_matches_dense_hessian():
    rng = np.random.default_rng(5)
    for depth in (2, 3, 4, 5):
        w = rng.uniform(0.2, 1.7, depth) * rng.choice([-1.0, 1.0], depth)
        phi = 0.9
        model = ScalarChain(torch.tensor(w), phi=phi)
        dense = dense_hessian(model, half_mse, (torch.ones(1, 1, dtype=F64), torch.full((1,), phi, dtype=F64)))
        assert np.allclose(dt.chain_hessian(w, phi), dense.numpy(), rtol=0, atol=1e-14)
        assert dt.chain_sharpness(w, phi) == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-13)


@pytest.mark.parametrize("kind, model_cfg, data_cfg", [
    ("deep_scalar_linear", {"depth": 4, "width": 2}, {"n_points": 3, "noise": 0.1}),
    ("scalar_chain", {"depth": 4}, None),
    ("deep_linear", {"hidden": [3, 2]}, {"n_samples": 10, "d_in": 3, "d_out": 2}),
])
def test_curvature_toolkit_sees_every_layer(kind, model_cfg, data_cfg):
    """dense_hessian (torch.func.functional_call over the named parameters) against the Hessian of the same
    loss written independently, through deep_theory.end_to_end of the unflattened layers."""
    model, x, y, loss_fn = build(kind, model_cfg, data_cfg)
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta):
        pieces = [piece.reshape(shape) for piece, shape in zip(theta.split([s.numel() for s in shapes]), shapes,
                                                                   strict=True)]
        if kind == "scalar_chain":
            mats = [w.reshape(1, 1) for w in pieces[0]]
        elif kind == "deep_scalar_linear":
            mats = [pieces[0][:, None], *pieces[1:-1], pieces[-1][None, :]]
        else:
            mats = pieces
        return loss_fn(x @ dt.end_to_end(mats).T, y)

    expected = torch.func.hessian(loss_of)(flat)
    assert torch.allclose(dense_hessian(model, loss_fn, (x, y)), expected, rtol=1e-12, atol=1e-13)


# --- least sharpness (section 8.2) --------------------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("phi", [1.0, 2.5, -0.7])
def test_least_sharpness_is_attained_at_the_balanced_minimum(depth, phi):
    least = float(dt.least_sharpness(depth, phi))
    assert least == pytest.approx(depth * abs(phi) ** (2 - 2 / depth), rel=1e-15)
    assert float(dt.stability_threshold(depth, phi)) == pytest.approx(2 / least, rel=1e-15)
    x, y = torch.ones(1, 1, dtype=F64), torch.full((1,), phi, dtype=F64)
    chain = ScalarChain(torch.tensor(dt.balanced_chain_minimum(depth, phi)), phi=phi)
    top = float(torch.linalg.eigvalsh(dense_hessian(chain, half_mse, (x, y)))[-1])
    assert top == pytest.approx(least, rel=1e-13)
    # the width-3 model at its balanced minimum (the balanced init with scale |phi|^(1/L)) is as flat
    net, _, _, _ = build("deep_scalar_linear", {"depth": depth, "width": 3, "phi": phi,
                                                "init": {"scheme": "balanced", "scale": abs(phi) ** (1 / depth)}})
    assert float(net.product().detach()) == pytest.approx(phi, rel=1e-14)
    top = float(torch.linalg.eigvalsh(dense_hessian(net, half_mse, (x, y)))[-1])
    assert top == pytest.approx(least, rel=1e-12)
    # every other minimum is sharper (AM-GM), for the chain and for the width-3 model
    rng = np.random.default_rng(depth)
    for _ in range(20):
        w = rng.uniform(0.2, 2.0, depth) * rng.choice([-1.0, 1.0], depth)
        w[-1] = phi / np.prod(w[:-1])
        assert dt.chain_minimum_sharpness(w) >= least * (1 - 1e-12)
        assert dt.chain_sharpness(w, phi) == pytest.approx(dt.chain_minimum_sharpness(w), rel=1e-12)


# --- GD against GF and the GF-solution sharpness along GD (section 8.2) -------------------------------

@st.composite
def chain_runs(draw, max_fraction: float):
    """(w0, phi, eta): depth 2-5, p(0) of the sign of phi (GF keeps every sign), eta = fraction * 2 / S_GF(w0)."""
    depth = draw(st.integers(2, 5))
    phi = draw(st.sampled_from([1.0, 0.5, 2.0, -1.0]))
    scale = draw(st.floats(0.3, 2.0))
    shape = np.array(draw(st.lists(st.floats(0.5, 1.5), min_size=depth, max_size=depth)))
    signs = np.array(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=depth - 1, max_size=depth - 1)))
    signs = np.append(signs, math.copysign(1.0, phi) * np.prod(signs))
    w0 = scale * shape * signs
    fraction = draw(st.floats(0.05, max_fraction))
    return w0, phi, fraction * 2 / dt.chain_gf_solution_sharpness(w0, phi)


def monotone_regime(w, eta: float, phi: float) -> bool:
    """eta S(w) < 2 and eta S_GF(w) < 2: where one GD step never increases the GF-solution sharpness.

    The first condition alone (theory.md 8.2's wording) is not enough: see
    test_current_sharpness_below_2_over_eta_alone_does_not_make_the_gf_sharpness_monotone."""
    return eta * dt.chain_sharpness(w, phi) < 2 and eta * dt.chain_gf_solution_sharpness(w, phi) < 2


@PROPERTY
@given(chain_runs(max_fraction=1.3))
def test_converged_gd_ends_no_sharper_than_gf_and_never_below_the_least_sharpness(run):
    """Every converged GD run ends at or above the least sharpness L |Phi|^(2-2/L). Where every step was in
    the monotone regime (so the GF-solution sharpness never increased) and GD converged with
    eta < 2 / S_final, it ends no sharper than GF from the same init. Without that condition it can end
    sharper: test_gd_can_end_sharper_than_gf_when_a_step_overshoots."""
    w0, phi, eta = run
    held = [True]

    def watch(w):
        held[0] = held[0] and monotone_regime(w, eta, phi)  # evaluated only until it first fails

    w, _, converged = chain_gd(w0, eta, phi, tol=1e-10, max_steps=2000, watch=watch)
    assume(converged)
    s_gd = dt.chain_sharpness(w, phi)
    least = float(dt.least_sharpness(w0.size, phi))
    assert s_gd >= least * (1 - 1e-8)
    assume(eta < 2 / s_gd and held[0])
    s_gf = dt.chain_gf_solution_sharpness(w0, phi)
    note(f"S_GD = {s_gd}, S_GF = {s_gf}, least = {least}")
    assert s_gd <= s_gf * (1 + 1e-8)


def test_gd_can_end_sharper_than_gf_when_a_step_overshoots():
    """Depth 2, eta |eps_0| > sqrt 2: the first step multiplies the imbalance by 1 - eta^2 eps_0^2 < -1, so
    |P| > 1 and GD ends sharper than GF although it converges with eta S_final < 2 (theory.md sections 3, 5:
    S_GD = sqrt(4 Phi^2 + P^2 Qn0^2))."""
    w0, phi, eta = np.array([1.88284449, 2.13522753]), 1.0, 0.5021170421312018
    factors = []
    w, _, converged = chain_gd(w0, eta, phi, tol=1e-12, max_steps=2000,
                               watch=lambda w: factors.append(1 - eta**2 * (np.prod(w) - phi) ** 2))
    assert converged and eta * dt.chain_sharpness(w, phi) < 2
    p = np.prod(factors)
    assert abs(p) > 1 and abs(factors[0]) > 1
    s_gd, s_gf = dt.chain_sharpness(w, phi), dt.chain_gf_solution_sharpness(w0, phi)
    assert s_gd > s_gf
    assert s_gd == pytest.approx(theory.gd_limit_norm(abs(w0[0] ** 2 - w0[1] ** 2), p, phi), rel=1e-10)


@PROPERTY
@given(chain_runs(max_fraction=1.5))
def test_gf_solution_sharpness_does_not_increase_along_gd_in_the_monotone_regime(run):
    w0, phi, eta = run
    checked = []

    def watch(w):
        if monotone_regime(w, eta, phi):
            w_next = dt.chain_gd_step(w, eta, phi)
            checked.append((dt.chain_gf_solution_sharpness(w, phi), dt.chain_gf_solution_sharpness(w_next, phi)))

    chain_gd(w0, eta, phi, tol=1e-10, max_steps=150, watch=watch)
    assume(checked)
    for s_now, s_next in checked:
        assert s_next <= s_now * (1 + 1e-12)


def test_current_sharpness_below_2_over_eta_alone_does_not_make_the_gf_sharpness_monotone():
    """Found by hypothesis: eta S(w_0) < 2, yet one step raises the GF-solution sharpness. At depth 2 this is
    section 3's rule: eta |eps_0| > sqrt 2 multiplies Qn by |1 - eta^2 eps_0^2| > 1; here eta S_GF > 2."""
    w0, phi, eta = np.array([-0.5, -0.5625]), 1.0, 1.998898463196485
    assert eta * dt.chain_sharpness(w0, phi) < 2
    assert eta * dt.chain_gf_solution_sharpness(w0, phi) > 2
    w1 = dt.chain_gd_step(w0, eta, phi)
    assert np.all(np.sign(w1) == np.sign(w0))  # no weight flipped sign
    eps0 = np.prod(w0) - phi
    assert abs(1 - eta**2 * eps0**2) > 1
    assert dt.chain_gf_solution_sharpness(w1, phi) > dt.chain_gf_solution_sharpness(w0, phi)
    assert dt.chain_gf_solution_sharpness(w1, phi) == pytest.approx(
        theory.gf_solution_sharpness(abs(1 - eta**2 * eps0**2) * abs(w0[0] ** 2 - w0[1] ** 2), phi), rel=1e-13)


# --- depth 2 is the shallow net -----------------------------------------------------------------------

@pytest.mark.parametrize("scheme, extra", [("gaussian", {}), ("imbalanced", {"imbalance": [-0.6]}),
                                           ("explicit", {"weights": [0.3, -1.2, 0.8, 1.1, 0.4, -0.2]})])
def test_depth_2_reproduces_the_shallow_net(scheme, extra):
    width, phi, eta = 3, 1.0, 0.3
    init = {"scheme": scheme, "scale": 1.4, "seed": 7, **extra}
    deep, x, y, loss_fn = build("deep_scalar_linear", {"depth": 2, "width": width, "phi": phi, "init": init})
    weights = extra.get("weights")
    a0, b0 = initial_vectors(width, scheme, 1.4, 7, extra.get("imbalance", [0.5])[0],
                             weights[:width] if weights else None, weights[width:] if weights else None)
    assert torch.equal(deep.layers[0], a0) and torch.equal(deep.layers[1], b0)
    shallow_net = ScalarLinearNet(a0, b0, phi=phi)
    nets, holders, closures = (deep, shallow_net), [[], []], []
    for net, holder in zip(nets, holders, strict=True):
        closures.append(closure_for(net, x, y, loss_fn, holder))
        holder.append(GradientDescent(net.parameters(), lr=eta))
    for _ in range(60):
        q_deep, q_shallow = deep.quantities(), shallow_net.quantities()
        for name in ("residual", "norm", "imbalance", "imbalance_norm", "imbalance_per_unit"):
            assert torch.equal(q_deep[name], q_shallow[name]), name
        for holder, closure in zip(holders, closures, strict=True):
            holder[0].step(closure)
        assert torch.equal(deep.layers[0], shallow_net.a) and torch.equal(deep.layers[1], shallow_net.b)
    a, b = shallow_net.a.detach(), shallow_net.b.detach()
    # the deep tags at depth 2: D_1 = b b^T - a a^T = -M, tr D_1 = -Q, |D_1|_* = Qn
    q = deep.quantities()
    assert float(q["imbalance_trace_1"]) == pytest.approx(-float(shallow.imbalance(a, b)), abs=1e-14)
    assert float(q["imbalance_fro_1"]) == pytest.approx(
        float(torch.linalg.matrix_norm(torch.outer(a, a) - torch.outer(b, b))), rel=1e-13)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("scheme", ["gaussian", "balanced", "imbalanced"])
def test_scalar_chain_is_the_deep_model_at_width_1(depth, scheme):
    init = {"scheme": scheme, "scale": 1.1, "seed": 2, "imbalance": [0.4]}
    chain, x, y, loss_fn = build("scalar_chain", {"depth": depth, "init": init})
    deep, _, _, _ = build("deep_scalar_linear", {"depth": depth, "width": 1, "init": init})
    assert torch.equal(chain.w, torch.cat([w.reshape(-1) for w in deep.layers]))
    holders = [[], []]
    closures = [closure_for(net, x, y, loss_fn, h) for net, h in zip((chain, deep), holders, strict=True)]
    for net, holder in zip((chain, deep), holders, strict=True):
        holder.append(GradientDescent(net.parameters(), lr=0.1))
    for _ in range(30):
        for holder, closure in zip(holders, closures, strict=True):
            holder[0].step(closure)
    flat = torch.cat([w.reshape(-1) for w in deep.layers])
    assert torch.allclose(chain.w, flat, rtol=1e-14, atol=1e-15)
    qc, qd = chain.quantities(), deep.quantities()
    for name in qd:
        assert torch.allclose(qc[name], qd[name], rtol=1e-13, atol=1e-14), name


# --- initialisations ----------------------------------------------------------------------------------

BALANCED_CASES = [
    ("deep_scalar_linear", {"depth": 2, "width": 4}),
    ("deep_scalar_linear", {"depth": 5, "width": 3, "phi": -2.0}),
    ("deep_scalar_linear", {"depth": 3, "width": 1}),
    ("scalar_chain", {"depth": 6}),
    ("deep_linear", {"hidden": [4, 3]}),
    ("deep_linear", {"hidden": [2, 7, 5]}),
]


@pytest.mark.parametrize("kind, model_cfg", BALANCED_CASES)
def test_balanced_init_has_every_imbalance_zero(kind, model_cfg):
    scale = 1.3
    model, _, _, _ = build(kind, {**model_cfg, "init": {"scheme": "balanced", "scale": scale, "seed": 5}})
    mats = matrices(model)
    assert max_abs(dt.layer_imbalances(mats)) <= 1e-14 * scale**2
    for w in mats:
        assert float(torch.linalg.matrix_norm(w)) == pytest.approx(scale, rel=1e-14)
    q = model.quantities()
    assert float(q["norm"]) == pytest.approx(len(mats) * scale**2, rel=1e-14)
    if kind != "deep_linear":
        phi = model.phi
        assert float(model.product().detach()) == pytest.approx(math.copysign(scale ** len(mats), phi), rel=1e-14)
    if kind == "scalar_chain":
        assert torch.all(model.w.abs() == scale)  # exactly


@pytest.mark.parametrize("kind, model_cfg", [("deep_scalar_linear", {"depth": 4, "width": 3}),
                                             ("scalar_chain", {"depth": 4}),
                                             ("deep_linear", {"hidden": [5, 2, 3]})])
def test_imbalanced_init_sets_each_pair_exactly(kind, model_cfg):
    imbalance, scale = [0.6, -0.3, 0.9], 0.8
    init = {"scheme": "imbalanced", "scale": scale, "imbalance": imbalance}
    model, _, _, _ = build(kind, {**model_cfg, "init": init})
    sq = [float((w * w).sum()) for w in matrices(model)]
    assert sum(sq) == pytest.approx(4 * scale**2, rel=1e-14)
    for pair, q in enumerate(imbalance):
        assert (sq[pair] - sq[pair + 1]) / (sq[pair] + sq[pair + 1]) == pytest.approx(q, abs=1e-14)
        assert float(model.quantities()[f"imbalance_trace_{pair + 1}"]) == pytest.approx(
            -q * (sq[pair] + sq[pair + 1]), abs=1e-14)
    # one number serves every pair
    model, _, _, _ = build(kind, {**model_cfg, "init": {"scheme": "imbalanced", "imbalance": [0.5]}})
    sq = [float((w * w).sum()) for w in matrices(model)]
    assert [(a - b) / (a + b) for a, b in zip(sq[:-1], sq[1:], strict=True)] == pytest.approx([0.5] * 3, abs=1e-14)


def test_gaussian_init_variances_and_seeds():
    net, _, _, _ = build("deep_linear", {"hidden": [300, 200], "init": {"scale": 2.0, "seed": 1}},
                         {"d_in": 400, "d_out": 3})
    for w in net.layers:
        fan_in = w.shape[1]
        assert float(w.detach().var()) == pytest.approx(4.0 / fan_in, rel=0.1)
    again, _, _, _ = build("deep_linear", {"hidden": [300, 200], "init": {"scale": 2.0, "seed": 1}},
                           {"d_in": 400, "d_out": 3})
    assert all(torch.equal(a, b) for a, b in zip(net.layers, again.layers, strict=True))
    deep, _, _, _ = build("deep_scalar_linear", {"depth": 3, "width": 200, "init": {"scale": 1.5}})
    assert float(deep.layers[1].detach().var()) == pytest.approx(1.5**2 / 200, rel=0.05)


# --- the matrix-regression data -----------------------------------------------------------------------

@pytest.mark.parametrize("d_in, d_out, rank, condition", [(6, 4, None, 10.0), (8, 5, 3, 100.0), (3, 7, 1, 1.0)])
def test_matrix_regression_has_the_asked_rank_and_condition_number(d_in, d_out, rank, condition):
    cfg = make_config("deep_linear", data={"d_in": d_in, "d_out": d_out, "rank": rank, "condition": condition,
                                           "top_singular_value": 2.5, "seed": 11})
    a_star = deep_data.target_map(cfg)
    assert a_star.shape == (d_in, d_out)
    s = torch.linalg.svdvals(a_star)
    r = min(d_in, d_out) if rank is None else rank
    assert int((s > 1e-12 * s[0]).sum()) == r == torch.linalg.matrix_rank(a_star)
    assert float(s[0]) == pytest.approx(2.5, rel=1e-13)
    assert float(s[0] / s[r - 1]) == pytest.approx(condition, rel=1e-12)
    assert torch.allclose(s[:r], deep_data.singular_values(r, condition, 2.5), rtol=1e-13)
    data = deep_data.load_matrix_regression(cfg, F64)
    assert torch.allclose(data.y, data.x @ a_star, rtol=0, atol=1e-14)  # noise 0
    assert data.target is None and data.x_test is None


def test_matrix_regression_whitening_noise_test_split_and_dtypes():
    cfg = make_config("deep_linear", data={"n_samples": 50, "d_in": 5, "d_out": 3, "whiten": True, "noise": 0.1,
                                           "n_test": 20, "seed": 3})
    data = deep_data.load_matrix_regression(cfg, F64)
    assert torch.allclose(data.x.T @ data.x / 50, torch.eye(5, dtype=F64), rtol=0, atol=1e-14)
    a_star = deep_data.target_map(cfg)
    noise = data.y - data.x @ a_star
    assert 0.05 < float(noise.std()) < 0.2
    assert data.x_test.shape == (20, 5) and data.y_test.shape == (20, 3)
    single = deep_data.load_matrix_regression(cfg, torch.float32)
    assert single.x.dtype == torch.float32 and torch.equal(single.x, data.x.float())
    assert torch.equal(single.y, data.y.float())
    # whitened and noise-free: the loss of an end-to-end map A is exactly 1/2 |A - A*|^2
    clean = deep_data.load_matrix_regression(make_config("deep_linear", data={"d_in": 5, "d_out": 3,
                                                                             "whiten": True}), F64)
    a_star = deep_data.target_map(make_config("deep_linear", data={"d_in": 5, "d_out": 3, "whiten": True}))
    a = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert dt.regression_loss(a.T, clean.x, clean.y) == pytest.approx(0.5 * float(((a - a_star) ** 2).sum()),
                                                                     rel=1e-12)


# --- registry entries, schemas, dtypes ----------------------------------------------------------------

def test_registry_entries():
    expected = {"deep_scalar_linear": ("points", "residual", "half_mse"),
                "scalar_chain": ("points", "residual", "half_mse"),
                "deep_linear": ("matrix_regression", "loss", "half_sum_mse")}
    for name, (data_kind, convergence, loss) in expected.items():
        entry = registry.model_kind(name)
        assert (entry.default_data, entry.convergence, entry.loss) == (data_kind, convergence, loss)
        assert entry.schema is SCHEMA[name]
    assert registry.data_kind("matrix_regression").schema is deep_kinds.MatrixRegressionConfig


@pytest.mark.parametrize("kind, model_cfg", [("deep_scalar_linear", {}), ("scalar_chain", {}), ("deep_linear", {})])
def test_models_are_built_in_the_data_dtype_with_their_quantities(kind, model_cfg):
    model, x, y, loss_fn = build(kind, model_cfg, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    loss = loss_fn(model(x), y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    q = model.quantities()
    depth = len(model.matrices())
    assert {"norm", "imbalance", "imbalance_norm", "imbalance_per_unit"} <= set(q)
    assert {f"imbalance_fro_{i}" for i in range(1, depth)} | {f"imbalance_trace_{i}" for i in range(1, depth)} <= set(q)
    assert all(v.dim() == 0 for k, v in q.items() if k != "imbalance_per_unit") and q["imbalance_per_unit"].dim() == 1
    assert set(model.ratios.values()) <= set(q)
    if kind == "deep_linear":
        assert {"end_to_end_norm", "end_to_end_distance"} <= set(q)
    else:
        assert {"residual", "end_to_end"} <= set(q)
    if kind == "scalar_chain":
        assert {f"weight_{i}" for i in range(1, depth + 1)} <= set(q)


def test_deep_linear_distance_to_the_target_map():
    model, x, y, _ = build("deep_linear", {"hidden": [6, 6]}, {"d_in": 4, "d_out": 3})
    a_star = deep_data.target_map(make_config("deep_linear", data={"d_in": 4, "d_out": 3}))
    with torch.no_grad():
        expected = torch.linalg.matrix_norm(model.end_to_end() - a_star.T)
        assert torch.allclose(model(x), x @ model.end_to_end().T, rtol=1e-13, atol=1e-14)
    assert float(model.quantities()["end_to_end_distance"]) == pytest.approx(float(expected), rel=1e-14)


def test_validation_names_the_key():
    from shallownet.config import ConfigError

    IMBALANCE = "model.init.imbalance"  # noqa: N806
    cases = [
        ("deep_scalar_linear", {"depth": 1}, None, "model.depth"),
        ("deep_scalar_linear", {"init": {"scheme": "imbalanced", "imbalance": [0.5, 1.0]}}, None, IMBALANCE),
        ("scalar_chain", {"init": {"scheme": "imbalanced", "imbalance": [0.1, 0.2, 0.3]}}, None, IMBALANCE),
        ("scalar_chain", {"init": {"scheme": "explicit", "weights": [1.0, 2.0]}}, None, "model.init.weights"),
        ("scalar_chain", {"init": {"scheme": "uniform"}}, None, "model.init.scheme"),
        ("deep_linear", {"hidden": []}, None, "model.hidden"),
        ("deep_linear", {}, {"rank": 5, "d_in": 6, "d_out": 4}, "data.rank"),
        ("deep_linear", {}, {"rank": 1, "condition": 3.0}, "data.condition"),
        ("deep_linear", {}, {"whiten": True, "n_samples": 3}, "data.whiten"),
    ]
    for kind, model_cfg, data_cfg, key in cases:
        cfg = make_config(kind, model_cfg, data_cfg)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            SCHEMA[kind].validate(cfg)
            if cfg.data.kind == "matrix_regression":
                deep_kinds.MatrixRegressionConfig.validate(cfg)
    for kind in SCHEMA:  # the defaults are valid
        cfg = make_config(kind)
        SCHEMA[kind].validate(cfg)
    deep_kinds.MatrixRegressionConfig.validate(make_config("deep_linear"))


def test_deep_linear_refuses_scalar_points_data():
    cfg = make_config("deep_linear")
    points = registry.FullBatchData(torch.ones(3, 1, dtype=F64), torch.ones(3, dtype=F64), target=1.0)
    with pytest.raises(ValueError, match="float targets"):
        deep_linear.build_deep_linear(cfg, points)


# --- the DeepTheoryMonitor in a Lightning run ---------------------------------------------------------

def tiny_module(model, x, y, loss_fn, make_optimizer):
    """A minimal LightningModule: manual optimisation, one full-batch step per batch (lightning imported here:
    it takes seconds)."""
    import lightning as L

    class TinyModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()

            def closure():
                opt.zero_grad()
                loss = loss_fn(self.model(x), y)
                self.manual_backward(loss)
                return loss

            opt.step(closure=closure)

        def configure_optimizers(self):
            return make_optimizer(self.model.parameters())

        def train_dataloader(self):
            return torch.utils.data.DataLoader(range(1000), batch_size=None)

    return TinyModule()


def fit_with_monitor(module, steps: int, tmp_path=None, monitor=None):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from extensions.deep_monitor import DeepTheoryMonitor

    monitor = monitor or DeepTheoryMonitor()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, callbacks=[monitor],
                        logger=CSVLogger(tmp_path) if tmp_path is not None else False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    return trainer, monitor


def test_monitor_predicts_every_imbalance_of_a_deep_linear_run(tmp_path):
    model, x, y, loss_fn = build("deep_linear", {"hidden": [4, 3]}, {"n_samples": 30})
    module = tiny_module(model, x, y, loss_fn, lambda p: GradientDescent(p, lr=0.2))
    before = matrices(model)
    trainer, monitor = fit_with_monitor(module, 3, tmp_path)
    metrics = trainer.callback_metrics
    for pair in (1, 2):
        assert float(metrics[f"deep_theory/pred_error_imbalance_{pair}"]) <= 1e-13
        measured = dt.layer_imbalances(matrices(model))[pair - 1]
        assert float(metrics[f"deep_theory/pred_imbalance_fro_{pair}"]) == pytest.approx(
            float(torch.linalg.matrix_norm(measured)), rel=1e-12)
        assert float(metrics[f"deep_theory/pred_imbalance_trace_{pair}"]) == pytest.approx(
            float(torch.trace(measured)), abs=1e-12)
    assert not any(name.endswith("sharpness") for name in metrics)  # not a scalar chain
    assert monitor.last["deep_theory/pred_error_imbalance_1"] == float(metrics["deep_theory/pred_error_imbalance_1"])
    assert not torch.equal(before[0], matrices(model)[0])
    csv = (next(tmp_path.rglob("metrics.csv"))).read_text()
    assert "deep_theory/pred_imbalance_fro_2" in csv.splitlines()[0]
    # state for resume
    from extensions.deep_monitor import DeepTheoryMonitor

    restored = DeepTheoryMonitor(every_n_steps=5)  # the cadence is the constructor's, as in Lightning's callbacks
    restored.load_state_dict(monitor.state_dict())
    assert restored.every_n_steps == 5 and restored.last == monitor.last and restored.last_step == 3


def test_monitor_on_a_plain_sequential_chain():
    _, x, y, _ = build("deep_linear", {}, {"n_samples": 20, "d_in": 3, "d_out": 2})
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5, bias=False, dtype=F64), torch.nn.Linear(5, 2, bias=False,
                                                                                             dtype=F64))
    module = tiny_module(net, x, y, half_sum_mse, lambda p: GradientDescent(p, lr=0.3))
    trainer, _ = fit_with_monitor(module, 2)
    assert float(trainer.callback_metrics["deep_theory/pred_error_imbalance_1"]) <= 1e-13


def test_monitor_on_scalar_chains_gd_and_gf():
    phi, eta = 1.0, 0.2
    w0 = np.array([1.3, 0.6, 0.9])
    chain = ScalarChain(torch.tensor(w0), phi=phi)
    x, y = torch.ones(1, 1, dtype=F64), torch.full((1,), phi, dtype=F64)
    module = tiny_module(chain, x, y, half_mse, lambda p: GradientDescent(p, lr=eta))
    trainer, monitor = fit_with_monitor(module, 4)
    w = w0
    for _ in range(4):
        w = dt.chain_gd_step(w, eta, phi)
    metrics = trainer.callback_metrics
    assert float(metrics["deep_theory/gf_solution_sharpness"]) == pytest.approx(
        dt.chain_gf_solution_sharpness(w, phi), rel=1e-12)
    assert float(metrics["deep_theory/least_sharpness"]) == 3.0
    assert float(metrics["deep_theory/sharpness"]) == pytest.approx(dt.chain_sharpness(w, phi), rel=1e-12)
    assert float(metrics["deep_theory/pred_error_imbalance_2"]) <= 1e-14
    # gradient flow: lr = 0, nothing to predict, the chain values still logged
    chain = ScalarChain(torch.tensor(w0), phi=phi)
    module = tiny_module(chain, x, y, half_mse, lambda p: DormandPrince(p))
    trainer, monitor = fit_with_monitor(module, 3)
    assert not any("pred_" in name for name in trainer.callback_metrics)
    expected = dt.chain_gf_solution_sharpness(w0, phi)
    assert monitor.last["deep_theory/gf_solution_sharpness"] == pytest.approx(expected, rel=1e-9)
