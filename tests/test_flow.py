"""Gradient flow: the integrators against theory.md section 4, and GF inside the Lightning run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shallownet import theory
from shallownet.config import RunConfig, load_config
from shallownet.events import read_metrics, read_scalars
from shallownet.flow import DormandPrince, RungeKutta4
from shallownet.model import ScalarLinearNet
from shallownet.stop import CONVERGED, MAX_STEPS, MAX_TIME

SETTINGS = settings(max_examples=25, deadline=None)


# --- helpers ----------------------------------------------------------------------------------------

def shallow_problem(a0, b0, phi: float):
    """A ScalarLinearNet at (a0, b0) and the closure of L = 1/2 (a.b - phi)^2 for an integrator `holder[0]`."""
    net = ScalarLinearNet(torch.as_tensor(a0, dtype=torch.float64), torch.as_tensor(b0, dtype=torch.float64))
    holder = []

    def closure():
        holder[0].zero_grad()
        loss = 0.5 * (net.product() - phi) ** 2
        loss.backward()
        return loss

    return net, holder, closure


def integrate(a0, b0, phi: float, make, tol: float = 1e-10, max_steps: int = 5_000):
    """Steps `make(params)` until |eps| <= tol; returns (a, b, integrator, path of (t, eps, lam))."""
    net, holder, closure = shallow_problem(a0, b0, phi)
    flow = make(net.parameters())
    holder.append(flow)
    path = []
    for _ in range(max_steps):
        with torch.no_grad():
            eps = float(net.product()) - phi
            path.append((flow.t, eps, float(net.a @ net.a + net.b @ net.b)))
        if abs(eps) <= tol:
            break
        flow.step(closure)
    return net.a.detach().numpy(), net.b.detach().numpy(), flow, np.array(path)


@st.composite
def initialisations(draw, max_width: int = 8):
    width = draw(st.integers(1, max_width))
    entries = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False)
    a0 = np.array(draw(st.lists(entries, min_size=width, max_size=width)))
    b0 = np.array(draw(st.lists(entries, min_size=width, max_size=width)))
    u, v = theory.uv_from_ab(a0, b0)
    assume(u > 0.1)  # a0 near -b0 starts next to the saddle at 0: GF gets there, but only after a long time
    # theory.gf_limit loses digits to cancellation when U0 V0 << phi^2 (see test_theory.py)
    assume(u * v >= 1e-4 or v == 0.0)
    return a0, b0


phis = st.floats(0.25, 2.0)


# --- the adaptive integrator on the shallow net -------------------------------------------------------

@SETTINGS
@given(initialisations(), phis)
def test_gf_conserves_imbalances_and_reaches_the_closed_form_limit(init, phi):
    a0, b0 = init
    a, b, flow, _ = integrate(a0, b0, phi, lambda p: DormandPrince(p))
    assert abs(float(a @ b) - phi) <= 1e-10
    q0, q = a0 * a0 - b0 * b0, a * a - b * b
    scale = max(float(a0 @ a0 + b0 @ b0), float(a @ a + b @ b))
    # relative drift of every Q_i <= 1e-9 where Q_i(0) is resolvable in float64 at all (|Q_i| not ~ round-off of
    # a_i^2 + b_i^2); and an absolute bound for every unit, balanced ones included
    resolvable = np.abs(q0) >= 1e-3 * (a0 * a0 + b0 * b0)
    assert np.all(np.abs(q - q0)[resolvable] <= 1e-9 * np.abs(q0)[resolvable])
    assert np.all(np.abs(q - q0) <= 1e-10 * scale)
    assert abs(q.sum() - q0.sum()) <= 1e-9 * max(abs(q0.sum()), 1e-2 * scale)
    qn0 = theory.state(a0, b0, phi)["imbalance_norm"]
    assert abs(theory.state(a, b, phi)["imbalance_norm"] - qn0) <= 1e-9 * max(qn0, 1e-2 * scale)
    a_gf, b_gf = theory.gf_limit(a0, b0, phi)
    assert max(np.abs(a - a_gf).max(), np.abs(b - b_gf).max()) <= 1e-8 * math.sqrt(scale)


@SETTINGS
@given(initialisations(), phis)
def test_gf_keeps_the_directions_of_a_plus_b_and_a_minus_b(init, phi):
    """u(t) = u0 e^(-s(t)), v(t) = v0 e^(s(t)): both keep their directions (and do not flip)."""
    a0, b0 = init
    a, b, _, _ = integrate(a0, b0, phi, lambda p: DormandPrince(p))
    for w0, w in ((a0 + b0, a + b), (a0 - b0, a - b)):
        if np.linalg.norm(w0) > 1e-3:
            cosine = float(w @ w0) / (np.linalg.norm(w) * np.linalg.norm(w0))
            assert abs(cosine - 1.0) <= 1e-12


@SETTINGS
@given(st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=8).filter(lambda a: sum(x * x for x in a) > 0.05),
       phis)
def test_gf_from_a_balanced_init_stays_balanced(a0, phi):
    a0 = np.array(a0)
    a, b, _, _ = integrate(a0, a0.copy(), phi, lambda p: DormandPrince(p))
    assert np.array_equal(a, b)


def test_gf_residual_decays_like_exp_minus_lam_gf_t():
    """An asymptotic statement: the rate is lam_GF up to O(|eps|), and the integrator controls the absolute
    error of theta (~1e-12), so the fit uses 1e-8 < |eps| < 1e-4 and checks the rate to 1e-3."""
    a0, b0 = np.array([1.3, -0.2, 0.4]), np.array([0.1, 0.5, 0.3])
    _, _, _, path = integrate(a0, b0, 1.0, lambda p: DormandPrince(p), tol=1e-11)
    t, eps = path[:, 0], np.abs(path[:, 1])
    tail = (eps < 1e-4) & (eps > 1e-8)
    slope = np.polyfit(t[tail], np.log(eps[tail]), 1)[0]
    lam_gf = float(theory.gf_solution_sharpness(theory.state(a0, b0, 1.0)["imbalance_norm"], 1.0))
    assert slope == pytest.approx(-lam_gf, rel=1e-3)


# --- integrator mechanics -----------------------------------------------------------------------------

def test_rk4_is_fourth_order():
    a0, b0 = np.array([1.2, 0.3]), np.array([-0.4, 0.9])
    exact = None
    errors = []
    for h in (0.1, 0.05, 0.025):
        net, holder, closure = shallow_problem(a0, b0, 1.0)
        flow = RungeKutta4(net.parameters(), step_size=h, t_stop=1.0)
        holder.append(flow)
        while flow.t < 1.0:
            flow.step(closure)
        if exact is None:  # reference: the adaptive integrator at a tight tolerance, landing on t = 1
            ref, ref_holder, ref_closure = shallow_problem(a0, b0, 1.0)
            ref_flow = DormandPrince(ref.parameters(), rtol=1e-13, atol=1e-15, t_stop=1.0)
            ref_holder.append(ref_flow)
            while ref_flow.t < 1.0:
                ref_flow.step(ref_closure)
            exact = torch.cat([ref.a.detach(), ref.b.detach()])
        assert flow.t == 1.0 and flow.grad_evals == 4 * round(1.0 / h)
        errors.append(float((torch.cat([net.a.detach(), net.b.detach()]) - exact).abs().max()))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 3.7) & (orders < 4.3)), orders


def test_dormand_prince_bookkeeping_and_t_stop():
    net, holder, closure = shallow_problem(np.array([1.5, 0.1]), np.array([0.2, -0.3]), 1.0)
    flow = DormandPrince(net.parameters(), t_stop=0.7)
    holder.append(flow)
    steps = 0
    while flow.t < 0.7:
        flow.step(closure)
        steps += 1
    assert flow.t == 0.7  # the last step is clipped to land exactly on t_stop
    # 1 gradient for the first stage, 1 for the starting-step estimate, then 6 per trial step (FSAL)
    assert flow.grad_evals == 2 + 6 * (steps + flow.rejected)
    assert "lr" not in flow.param_groups[0]  # a flow has no step size
    restored = DormandPrince(ScalarLinearNet(torch.zeros(2, dtype=torch.float64),
                                             torch.zeros(2, dtype=torch.float64)).parameters())
    restored.load_state_dict(flow.state_dict())
    assert (restored.t, restored.grad_evals, restored.step_size) == (flow.t, flow.grad_evals, flow.step_size)


def test_dormand_prince_reevaluates_the_first_stage_when_parameters_move():
    net, holder, closure = shallow_problem(np.array([1.5, 0.1]), np.array([0.2, -0.3]), 1.0)
    flow = DormandPrince(net.parameters())
    holder.append(flow)
    flow.step(closure)
    evals = flow.grad_evals
    flow.step(closure)
    assert flow.grad_evals - evals == 6 * (1 + flow.rejected)  # the cached last stage was reused
    evals, rejected = flow.grad_evals, flow.rejected
    with torch.no_grad():
        net.a.mul_(0.5)
    flow.step(closure)
    assert flow.grad_evals - evals == 1 + 6 * (1 + flow.rejected - rejected)


def test_integrators_reject_bad_settings():
    params = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError, match="rtol"):
        DormandPrince(params, rtol=0.0)
    with pytest.raises(ValueError, match="step_size"):
        RungeKutta4(params, step_size=-1.0)


# --- gradient flow inside the Lightning run -----------------------------------------------------------

def run_config(*overrides: str):
    return load_config(RunConfig, None, ["model.init.scheme=imbalanced", "model.init.scale=1.5",
                                         "model.init.imbalance=0.8", "model.width=6", *overrides])


def final_parameters(log_dir) -> tuple[np.ndarray, np.ndarray]:
    state = torch.load(log_dir / "last.ckpt", weights_only=False)["state_dict"]
    return state["model.a"].numpy(), state["model.b"].numpy()


def test_lightning_gf_converges_to_the_closed_form_with_gd_tags(tmp_path):
    from shallownet.training import build, run

    cfg = run_config("optim.method=flow", "train.time_unit=0.1", "train.max_time=100")
    summary = run(cfg, tmp_path / "gf")
    assert summary["status"] == CONVERGED and summary["eta"] is None
    assert abs(summary["final"]["residual"]) <= cfg.train.tol
    model = build(cfg).module.model
    a0, b0 = model.a.detach().numpy(), model.b.detach().numpy()
    a, b = final_parameters(tmp_path / "gf")
    q0, q = a0 * a0 - b0 * b0, a * a - b * b
    assert np.all(np.abs(q - q0) <= 1e-9 * np.abs(q0))
    a_gf, b_gf = theory.gf_limit(a0, b0, 1.0)
    assert max(np.abs(a - a_gf).max(), np.abs(b - b_gf).max()) <= 1e-8
    assert summary["final"]["norm"] == pytest.approx(theory.gf_solution_sharpness(np.linalg.norm(a0 + b0)
                                                                                  * np.linalg.norm(a0 - b0), 1.0),
                                                     rel=1e-9)
    # the same tags as a GD run, on a time axis: step = round(t / 0.1)
    run(run_config("optim.lr=0.1", "train.time_unit=0.1"), tmp_path / "gd")
    gf_tags, gd_tags = read_scalars(tmp_path / "gf"), read_scalars(tmp_path / "gd")
    step_size_tags = {"curvature/stability_threshold", "curvature/sharpness_x_lr",  # 2/eta, eta*S: GD only
                      "curvature/sharpness_over_threshold"}
    assert {t for t in gd_tags if t.startswith(("dynamics/", "curvature/"))} - step_size_tags <= set(gf_tags)
    assert step_size_tags <= set(gd_tags) and not step_size_tags & set(gf_tags)
    steps = gf_tags["dynamics/residual"][0]  # logged at every accepted step, drawn at round(t / 0.1)
    assert steps[0] == 0 and np.all(np.diff(steps) >= 0)
    np.testing.assert_array_equal(gf_tags["process/step"][1], np.arange(summary["steps"] + 1))
    assert steps[-1] == round(summary["time"] / 0.1)
    assert summary["grad_evals"] == 2 + 6 * (summary["steps"] + summary["rejected"])


def test_lightning_gf_from_antibalanced_init_ends_at_max_time(tmp_path):
    from shallownet.training import run

    cfg = run_config("model.init.scheme=explicit", "model.width=2", "model.init.a0=[0.5,-1.0]",
                     "model.init.b0=[-0.5,1.0]", "optim.method=flow", "train.time_unit=0.1", "train.max_time=3")
    summary = run(cfg, tmp_path)
    assert summary["status"] == MAX_TIME
    assert summary["time"] == 3.0
    assert summary["final"]["residual"] < -0.9  # on its way to the saddle at 0, never to a minimum
    residual_steps, _ = read_metrics(tmp_path)["dynamics/residual"]
    assert residual_steps[-1] == 30  # the logs reach the budget: flushed, not cut off


def test_lightning_gd_from_antibalanced_init_reports_max_steps(tmp_path):
    from shallownet.training import run

    cfg = run_config("model.init.scheme=explicit", "model.width=2", "model.init.a0=[0.5,-1.0]",
                     "model.init.b0=[-0.5,1.0]", "optim.lr=0.3", "train.max_steps=200")
    summary = run(cfg, tmp_path)
    assert summary["status"] == MAX_STEPS and summary["steps"] == 200
    assert summary["final"]["residual"] <= -1.0
