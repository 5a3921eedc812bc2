"""The momentum sweep engine (shallownet.sweep.momentum) against torch.optim.SGD single runs, the GD engine
at beta = 0, the theory identities, and between its two backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallownet import theory
from shallownet.config import load_config
from shallownet.stop import OUTCOMES as RULE_OUTCOMES
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS, OUTCOMES, StopRule, simulate
from shallownet.sweep.grid import SweepConfig, build_grid
from shallownet.sweep.momentum import run_momentum_torch, simulate_momentum
from shallownet.sweep.momentum_kernel import run_momentum_numba

# An odd budget: the kernel takes two steps per pass over a block and the last one alone.
RULE = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=401)
FIELDS = ("residual", "norm", "factor", "max_step", "steps")
PHI = 1.0


def random_points(n, width=10, seed=0):
    """Initial points of width d at scales 0.2 to 2.5, and per-run (eta, beta, init_index) covering every
    outcome: converged, diverged, budget exhausted."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 2.5, 40)
    a0 = rng.standard_normal((40, width)) * scale[:, None] / np.sqrt(width)
    b0 = rng.standard_normal((40, width)) * scale[:, None] / np.sqrt(width)
    return a0, b0, rng.uniform(0.01, 1.6, n), rng.uniform(0.0, 0.95, n), rng.integers(0, 40, n)


def assert_runs_equal(x, y):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


def sgd_run(a0, b0, eta, beta, phi, rule, nesterov=False, buffers=None):
    """One run of torch.optim.SGD (momentum beta, dampening 0) on [d]-vectors a, b, the stop rule judged
    before every step: outcome, steps, max eta|eps_t|, and the trajectory [(eps_t, lam_t, Q_t)]. If
    `buffers` is a list, the optimizer's momentum buffers (buf_a, buf_b) before each step are appended."""
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([a, b], lr=eta, momentum=beta, dampening=0.0, nesterov=nesterov)
    trajectory, max_step = [], 0.0
    for k in range(rule.max_steps + 1):
        with torch.no_grad():
            eps, lam, q = (a @ b).item() - phi, (a @ a + b @ b).item(), (a @ a - b @ b).item()
        trajectory.append((eps, lam, q))
        if buffers is not None:
            buffers.append([opt.state[p]["momentum_buffer"].numpy().copy() if k else np.zeros(len(a0))
                            for p in (a, b)])
        outcome = rule.judge(eps, lam, steps=k)
        if outcome is not None:
            return RULE_OUTCOMES.index(outcome), k, max_step, np.array(trajectory)
        opt.zero_grad()
        (0.5 * (a @ b - phi) ** 2).backward()
        opt.step()
        max_step = max(max_step, abs(eta * eps))


def at_a_boundary(trajectory, rule, rtol=1e-9):
    """True where some state of the trajectory sits within rtol of a threshold of the stop rule, so that
    round-off alone could move the step at which the run stops."""
    eps, lam = np.abs(trajectory[:, 0]), trajectory[:, 1]
    return bool((np.abs(eps - rule.tol) <= rtol * rule.tol).any()
                | (np.abs(lam - rule.divergence_norm) <= rtol * rule.divergence_norm).any())


# --- the two backends ------------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov", [False, True])
def test_numba_and_torch_give_the_same_bits(nesterov):
    a0, b0, eta, beta, index = random_points(3000, seed=1)
    numba_runs = simulate_momentum(eta, beta, index, a0, b0, PHI, RULE, nesterov=nesterov)
    torch_runs = simulate_momentum(eta, beta, index, a0, b0, PHI, RULE, nesterov=nesterov, backend="torch",
                                   chunk_size=1024)
    assert_runs_equal(numba_runs, torch_runs)
    assert set(numba_runs.outcome(RULE)) == {CONVERGED, DIVERGED, MAX_STEPS}
    # the raw states too, momentum buffers included (a stopped run's buffers are frozen as well)
    u0, v0 = ((a0 + b0) ** 2).sum(1)[index], ((a0 - b0) ** 2).sum(1)[index]
    args = (u0, v0, eta, beta, PHI, RULE.tol, RULE.divergence_norm, RULE.max_steps)
    for x, y in zip(run_momentum_numba(*args, nesterov=nesterov), run_momentum_torch(*args, nesterov=nesterov),
                    strict=True):
        np.testing.assert_array_equal(x, y.numpy())


@pytest.mark.parametrize("nesterov", [False, True])
def test_collapsing_imbalance_is_flushed_to_zero_alike_on_both_backends(nesterov):
    """Beyond the stability threshold (eta phi = 1.1 (1 + beta), resp. 1.1 (1 + beta) / (1 + 2 beta)) the
    imbalance collapses: alpha or gamma falls through FLUSH = 2^-480 to exactly 0 within 5001 steps, and
    both backends flush it at the same step."""
    a0, b0, _, _, _ = random_points(1, seed=8)
    beta = np.linspace(0.0, 0.6, 40)
    eta = 1.1 * ((1 + beta) / (1 + 2 * beta) if nesterov else 1 + beta) / PHI
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=5001)
    index = np.arange(40)
    numba_runs = simulate_momentum(eta, beta, index, a0, b0, PHI, rule, nesterov=nesterov)
    assert_runs_equal(numba_runs, simulate_momentum(eta, beta, index, a0, b0, PHI, rule, nesterov=nesterov,
                                                    backend="torch"))
    going_on = numba_runs.outcome(rule) == MAX_STEPS
    assert going_on.sum() >= 10 and (numba_runs.factor[going_on] == 0.0).sum() >= 10


def test_a_run_gives_the_same_bits_wherever_it_is_placed():
    """Lane position, neighbours, chunking and padding do not change a run (the basis of an exact merge of
    a sweep split over processes)."""
    a0, b0, eta, beta, index = random_points(2000, seed=2)
    whole = simulate_momentum(eta, beta, index, a0, b0, PHI, RULE, chunk_size=700)
    order = np.random.default_rng(3).permutation(2000)[:600]
    part = simulate_momentum(eta[order], beta[order], index[order], a0, b0, PHI, RULE, chunk_size=333)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[order], err_msg=name)


def test_torch_path_is_float64_and_a_number_beta_is_one_per_run():
    out = run_momentum_torch([4.5], [0.3], [0.1], [0.9], PHI, 1e-8, 1e12, 5)
    assert all(t.dtype in (torch.float64, torch.int64) for t in out)
    a0, b0, eta, _, index = random_points(300, seed=4)
    assert_runs_equal(simulate_momentum(eta, 0.7, index, a0, b0, PHI, RULE),
                      simulate_momentum(eta, np.full(300, 0.7), index, a0, b0, PHI, RULE))


@pytest.mark.cuda
@pytest.mark.parametrize("nesterov", [False, True])
def test_cuda_gives_the_numba_bits(nesterov):
    a0, b0, eta, beta, index = random_points(20000, seed=5)
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=3001)
    assert_runs_equal(simulate_momentum(eta, beta, index, a0, b0, PHI, rule, nesterov=nesterov, backend="torch",
                                        device="cuda"),
                      simulate_momentum(eta, beta, index, a0, b0, PHI, rule, nesterov=nesterov))
    assert all(t.device.type == "cuda" for t in run_momentum_torch([4.5], [0.3], [0.1], [0.9], PHI, 1e-8, 1e12, 600,
                                                                   device="cuda"))


# --- agreement with torch.optim.SGD single runs ------------------------------------------------------

def sgd_configs(nesterov):
    """Width-10 points at three scales, two step sizes and two momenta, and a larger step from the largest
    scale, which diverges. None is chaotic, where round-off grows exponentially (see the chaotic test below)."""
    rng = np.random.default_rng(11)
    points = [(rng.standard_normal(10) * s / np.sqrt(10), rng.standard_normal(10) * s / np.sqrt(10))
              for s in (0.3, 1.0, 1.6)]
    configs = [(a0, b0, eta, beta) for a0, b0 in points for eta in (0.05, 0.3) for beta in (0.3, 0.9)
               if not (nesterov and (eta, beta) == (0.05, 0.9))]  # slow there: keep the test to seconds
    return configs + [(*points[2], 0.8, beta) for beta in (0.3, 0.9)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_trajectories_equal_single_torch_sgd_runs(nesterov):
    """The engine's state after t steps (budgets t = 1, 2, 3, 10, 57 and the odd 301) against torch.optim.SGD
    on [d]-vectors, step by step: eps, lam and Q(t)/Q(0) = alpha gamma to round-off, same outcome and steps."""
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=301)
    configs = sgd_configs(nesterov)
    a0 = np.stack([c[0] for c in configs])
    b0 = np.stack([c[1] for c in configs])
    eta, beta = np.array([c[2] for c in configs]), np.array([c[3] for c in configs])
    buffers = [[] for _ in configs]
    refs = [sgd_run(*c, PHI, rule, nesterov, buffers=bufs) for c, bufs in zip(configs, buffers, strict=True)]
    index = np.arange(len(configs))
    u0, v0 = a0 + b0, a0 - b0
    full = simulate_momentum(eta, beta, index, a0, b0, PHI, rule, nesterov=nesterov)
    outcome = full.outcome(rule)
    assert {CONVERGED, DIVERGED} <= set(outcome)
    for i, (code, steps, max_step, trajectory) in enumerate(refs):
        if not at_a_boundary(trajectory, rule):
            assert (outcome[i], full.steps[i]) == (code, steps), i
        np.testing.assert_allclose(full.max_step[i], max_step, rtol=1e-12 if code != DIVERGED else 1e-6)
    for budget in (1, 2, 3, 10, 57, 301):
        runs = simulate_momentum(eta, beta, index, a0, b0, PHI, StopRule(rule.tol, rule.divergence_norm, budget),
                                 nesterov=nesterov)
        for i, (code, steps, _, trajectory) in enumerate(refs):
            t = min(budget, steps)
            eps, lam, q = trajectory[t]
            assert runs.steps[i] == t
            # A diverged run's last state comes out of a blow-up that multiplies relative round-off at every
            # step; up to there, and in every other run, the two agree to round-off.
            rtol = 1e-6 if code == DIVERGED and t == steps else 1e-12
            np.testing.assert_allclose(runs.residual[i], eps, rtol=rtol, atol=rtol * PHI, err_msg=f"{i} {t}")
            np.testing.assert_allclose(runs.norm[i], lam, rtol=rtol, err_msg=f"{i} {t}")
            np.testing.assert_allclose(runs.factor[i], q / trajectory[0, 2], rtol=rtol, atol=rtol,
                                       err_msg=f"{i} {t}")
        # the buffers: buf_a = (mu u0 + nu v0) / 2, buf_b = (mu u0 - nu v0) / 2, frozen once a run stopped;
        # to round-off of the largest buffer the run held so far (a decaying buffer keeps that absolute error)
        _, mu, _, nu, _, _ = run_momentum_numba(
            (u0**2).sum(1), (v0**2).sum(1), eta, beta, PHI, rule.tol, rule.divergence_norm, budget, nesterov)
        for i, (code, steps, _, _) in enumerate(refs):
            t = min(budget, steps)
            if code == DIVERGED and t == steps:
                continue  # the blow-up's last buffers: the values above already show where it ended
            m_u, m_v = mu[i] * u0[i], nu[i] * v0[i]
            buf_a, buf_b = buffers[i][t]
            error = np.abs(np.concatenate([(m_u + m_v) / 2 - buf_a, (m_u - m_v) / 2 - buf_b])).max()
            scale = max(np.linalg.norm(x) + np.linalg.norm(y) for x, y in buffers[i][:t + 1]) + 1e-300
            assert error <= 1e-12 * scale, (i, t, error / scale)


def test_chaotic_runs_agree_in_outcome_not_in_final_state():
    """Nesterov with eta = 0.8, beta = 0.9 from a width-10 point is chaotic: round-off grows exponentially
    (SGD and the engine part by 1e-4 in eps within 200 steps), so the two end at different points of the
    same attractor; both keep iterating, and both collapse the imbalance."""
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=601)
    a0, b0, _, _ = sgd_configs(True)[0]
    code, steps, _, trajectory = sgd_run(a0, b0, 0.8, 0.9, PHI, rule, nesterov=True)
    runs = simulate_momentum([0.8], 0.9, [0], a0[None], b0[None], PHI, rule, nesterov=True)
    assert code == runs.outcome(rule)[0] == MAX_STEPS and steps == runs.steps[0] == 601
    assert abs(trajectory[-1, 2] / trajectory[0, 2]) < 1e-14 and abs(runs.factor[0]) < 1e-14


@pytest.fixture(scope="module")
def figure3_grid():
    return build_grid(load_config(SweepConfig, None, ["grid.lr.num=60", "grid.scale.num=40"]))


@pytest.mark.parametrize("nesterov", [False, True])
def test_figure3_grid_points_agree_with_single_torch_sgd_runs(figure3_grid, nesterov):
    """Twenty quick points of a Figure-3 grid (width 10, imbalanced init) at beta = 0.9 below eta = 1/phi:
    outcome, steps, final norm, Q(T)/Q(0) and max eta|eps_t| as torch.optim.SGD gives them."""
    grid, beta = figure3_grid, 0.9
    eta_all, index_all = grid.runs()
    probe = simulate_momentum(eta_all, beta, index_all, grid.a0, grid.b0, grid.phi, grid.rule, nesterov=nesterov)
    outcome = probe.outcome(grid.rule)
    quick = np.flatnonzero((probe.steps <= 250) & (eta_all * grid.phi < 1.0))
    picked = np.random.default_rng(7).choice(quick, 20, replace=False)
    assert {CONVERGED, DIVERGED} <= set(outcome[quick])
    for i in picked:
        a0, b0 = grid.a0[index_all[i]], grid.b0[index_all[i]]
        code, steps, max_step, trajectory = sgd_run(a0, b0, eta_all[i], beta, grid.phi, grid.rule, nesterov)
        assert (outcome[i], probe.steps[i]) == (code, steps), (i, OUTCOMES[code])
        rtol = 1e-10 if code != DIVERGED else 1e-6
        np.testing.assert_allclose([probe.norm[i], probe.factor[i], probe.max_step[i]],
                                   [trajectory[-1, 1], trajectory[-1, 2] / trajectory[0, 2], max_step], rtol=rtol)


# --- beta = 0 is gradient descent --------------------------------------------------------------------

def test_beta_zero_is_the_gd_engine():
    """Same outcomes and steps as shallownet.sweep.engine.simulate everywhere; values to round-off where
    the dynamics are not chaotic (eta phi < 1), and diverged runs to the precision their blow-up leaves."""
    a0, b0, eta, _, index = random_points(3000, seed=6)
    gd = simulate(eta, index, a0, b0, PHI, RULE)
    mom = simulate_momentum(eta, 0.0, index, a0, b0, PHI, RULE)
    outcome = gd.outcome(RULE)
    np.testing.assert_array_equal(mom.outcome(RULE), outcome)
    np.testing.assert_array_equal(mom.steps, gd.steps)
    assert set(outcome) == {CONVERGED, DIVERGED, MAX_STEPS}
    calm = (eta * PHI < 1.0) & (outcome != DIVERGED)
    for name in ("residual", "norm", "factor", "max_step"):
        np.testing.assert_allclose(getattr(mom, name)[calm], getattr(gd, name)[calm], rtol=1e-11, atol=1e-12,
                                   err_msg=name)
    diverged = outcome == DIVERGED
    np.testing.assert_allclose(mom.max_step[diverged], gd.max_step[diverged], rtol=1e-6)
    # Nesterov at beta = 0 adds beta * buffer = 0: the same bits as heavy ball
    assert_runs_equal(simulate_momentum(eta, 0.0, index, a0, b0, PHI, RULE, nesterov=True), mom)


# --- theory identities --------------------------------------------------------------------------------

def test_final_state_obeys_the_norm_identity_and_converged_runs_end_at_lam_gd():
    """lam^2 = 4 (eps + Phi)^2 + (alpha gamma Qn0)^2 holds in every state (alpha gamma = Q(T)/Q(0)); where a
    run converged, lam is the GD formula's sqrt(4 Phi^2 + P^2 Qn0^2) with P = alpha gamma, to O(tol)."""
    a0, b0, eta, beta, index = random_points(2000, seed=7)
    runs = simulate_momentum(eta, beta, index, a0, b0, PHI, RULE)
    outcome = runs.outcome(RULE)
    qn0 = np.sqrt(((a0 + b0) ** 2).sum(1) * ((a0 - b0) ** 2).sum(1))[index]
    finite = outcome != DIVERGED
    lhs = runs.norm[finite] ** 2
    rhs = 4 * (runs.residual[finite] + PHI) ** 2 + (runs.factor[finite] * qn0[finite]) ** 2
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    converged = outcome == CONVERGED
    assert converged.sum() > 100
    np.testing.assert_allclose(runs.norm[converged], theory.gd_limit_norm(qn0, runs.factor, PHI)[converged],
                               atol=1e-7)


# --- the stop rule -------------------------------------------------------------------------------------

TOL = 2.0**-20
# (a, b) for d = 1 and phi = 1, as tests/test_stop.py feeds them to every GD implementation
CASES = {
    "minimum with a runaway norm": (2.0**21, 2.0**-21),  # eps = 0 exactly, lam = 4.4e12: converged at 0
    "inf": (math.inf, 1.0),
    "nan": (math.nan, 1.0),
    "exactly tol": (1.0 + TOL, 1.0),  # eps = 2^-20 exactly: converged at step 0
    "just above tol": (1.0 + 2 * TOL, 1.0),
    "runaway, not converged": (2.0e6, 0.0),  # lam > divergence_norm at step 0
    "budget": (0.3, 0.2),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("max_steps", [1, 2, 3])
def test_stop_rule_edge_cases_as_torch_sgd_meets_them(backend, max_steps):
    rule = StopRule(TOL, 1e12, max_steps)
    a0 = np.array([[a] for a, _ in CASES.values()])
    b0 = np.array([[b] for _, b in CASES.values()])
    n = len(CASES)
    runs = simulate_momentum(np.full(n, 0.1), 0.9, np.arange(n), a0, b0, PHI, rule, backend=backend)
    got = {name: (int(c), int(k)) for name, c, k in zip(CASES, runs.outcome(rule), runs.steps, strict=True)}
    want = {name: sgd_run(np.array([a]), np.array([b]), 0.1, 0.9, PHI, rule)[:2] for name, (a, b) in CASES.items()}
    assert got == want
    for name in ("minimum with a runaway norm", "exactly tol"):
        assert got[name] == (CONVERGED, 0)
    for name in ("inf", "nan", "runaway, not converged"):
        assert got[name] == (DIVERGED, 0)
    assert got["budget"] == (MAX_STEPS, max_steps)
    stopped_at_once = runs.steps == 0
    assert (runs.factor[stopped_at_once & np.isfinite(runs.residual)] == 1.0).all()
    assert (runs.max_step[stopped_at_once] == 0.0).all()


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"backend": "cuda"}, "backend must be one of numba, torch"),
    ({"device": "cuda"}, "device must be cpu for backend=numba"),
    ({"beta": -0.1}, "beta must be finite and >= 0"),
    ({"beta": np.full(3, 0.5)}, r"beta must be a number or one per run \(4\)"),
    ({"init_index": np.array([0, 1, 2, 3])}, r"init_index must lie in \[0, 2\)"),
    ({"chunk_size": 0}, "chunk_size must be >= 1"),
])
def test_bad_input_is_refused_in_one_line(change, message):
    args = {"eta": np.full(4, 0.1), "beta": 0.5, "init_index": np.zeros(4, int), "a0": np.ones((2, 3)),
            "b0": np.ones((2, 3))}
    options = {}
    for key, value in change.items():
        (args if key in args else options)[key] = value
    with pytest.raises(ValueError, match=message) as error:
        simulate_momentum(args["eta"], args["beta"], args["init_index"], args["a0"], args["b0"], PHI, RULE, **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("nesterov, beta", [(False, 0.3), (False, 0.6), (True, 0.3), (True, 0.9)])
def test_no_minimum_is_stable_beyond_the_momentum_threshold(nesterov, beta):
    """Linearised at a minimum (sharpness S >= 2 phi), heavy ball is stable iff eta S < 2 (1 + beta) and
    Nesterov iff eta S < 2 (1 + beta) / (1 + 2 beta) (docs/theory.md): 3 % above eta phi = 1 + beta
    (resp. (1 + beta) / (1 + 2 beta)) no run converges and those that go on collapse the imbalance; 3 %
    below, runs converge."""
    rng = np.random.default_rng(0)
    scale = np.geomspace(0.1, 1.5, 30)
    a0, b0 = (rng.standard_normal((2, 30, 10)) * scale[:, None] / np.sqrt(10))
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=5001)
    threshold = ((1 + beta) / (1 + 2 * beta) if nesterov else 1 + beta) / PHI
    above = simulate_momentum(np.full(30, 1.03 * threshold), beta, np.arange(30), a0, b0, PHI, rule,
                              nesterov=nesterov)
    outcome = above.outcome(rule)
    assert not (outcome == CONVERGED).any() and (outcome == MAX_STEPS).any()
    assert (np.abs(above.factor[outcome == MAX_STEPS]) < 1e-60).all()
    below = simulate_momentum(np.full(30, 0.97 * threshold), beta, np.arange(30), a0, b0, PHI, rule,
                              nesterov=nesterov)
    assert (below.outcome(rule) == CONVERGED).sum() >= 4


# --- the `shallownet sweep` command with a momentum process, against single Lightning runs -------------

@pytest.mark.parametrize("method", ["momentum", "nesterov"])
def test_sweep_command_with_momentum_equals_single_train_runs(cli, tmp_path, method):
    from shallownet.config import RunConfig, load_config
    from shallownet.sweep.engine import OUTCOMES
    from shallownet.training import run
    from tests.conftest import CONFIGS, read_summary

    code, _, err, dirs = cli("sweep", f"optim.method={method}", "optim.momentum=0.6", "grid.lr.num=6",
                             "grid.scale.num=4", "train.max_steps=400", "init.width=3", "output.progress=false",
                             config=CONFIGS / "sweep.yaml")
    assert code == 0, err
    grid = np.load(dirs[0] / "grid.npz")
    summary = read_summary(dirs[0])
    assert summary["process"] == {"method": method, "momentum": 0.6} and "theorem1" not in summary
    seen = set()
    for i, j in [(0, 0), (1, 1), (2, 3), (3, 3), (5, 0), (4, 2), (3, 0)]:
        overrides = ["model.width=3", "model.init.scheme=imbalanced", "model.init.imbalance=0.5", "model.init.seed=0",
                     f"model.init.scale={float(grid['scale'][j])!r}", f"optim.method={method}", "optim.momentum=0.6",
                     f"optim.lr={float(grid['eta'][i])!r}", "train.max_steps=400", "train.tol=1e-8",
                     "monitor.dynamics.every_n_steps=1000000", "monitor.sharpness.every_n_steps=0"]
        single = run(load_config(RunConfig, None, overrides), tmp_path / f"{i}_{j}")
        outcome = OUTCOMES[grid["outcome"][i, j]]
        seen.add(outcome)
        assert single["status"] == outcome and single["steps"] == grid["steps"][i, j], (i, j)
        if outcome != "diverged":
            np.testing.assert_allclose(single["final"]["norm"], grid["final_norm"][i, j], rtol=1e-10)
            np.testing.assert_allclose(single["final"]["imbalance"] / single["init"]["imbalance"],
                                       grid["imbalance_ratio"][i, j], rtol=1e-10)
    assert {"converged", "diverged"} <= seen
