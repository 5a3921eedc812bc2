"""The sweep engine against the theory recursion, plain GD and the Lightning run; the `sweep` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shallownet import theory
from shallownet.config import load_config
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS, OUTCOMES, StopRule, simulate
from shallownet.sweep.grid import SweepConfig, build_grid, validate
from shallownet.sweep.kernel import run_uv_numba
from shallownet.sweep.torch_paths import run_uv_torch
from tests.conftest import CONFIGS, read_summary

# An odd budget: the kernels take two steps per pass over a block and the last one alone.
RULE = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=401)
FIELDS = ("residual", "norm", "factor", "max_step", "steps")


def random_uv(n, seed=0):
    """Initial (U, V) and steps covering every outcome: converged, diverged, budget exhausted."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 12.0, n), rng.uniform(0.0, 6.0, n), rng.uniform(0.01, 1.6, n)


def uv_reference(u, v, eta, phi, rule):
    """One run of theory.uv_step in plain Python with the engine's stop rule."""
    factor, max_step = 1.0, 0.0
    for k in range(rule.max_steps + 1):
        eps, lam, _ = theory.state_from_uv(u, v, phi)
        if abs(eps) <= rule.tol:
            return CONVERGED, k, u, v, factor, max_step
        if not lam <= rule.divergence_norm:
            return DIVERGED, k, u, v, factor, max_step
        if k == rule.max_steps:
            return MAX_STEPS, k, u, v, factor, max_step
        factor *= theory.imbalance_factor_step(eps, eta)
        max_step = max(max_step, eta * abs(eps))
        u, v = theory.uv_step(u, v, eta, phi)


def gd_reference(a, b, eta, phi, rule):
    """One plain float64 GD run on (a, b): outcome, steps, P, final lam, max eta|eps_t|, final Q."""
    factor, max_step = 1.0, 0.0
    for k in range(rule.max_steps + 1):
        eps, lam = a @ b - phi, a @ a + b @ b
        done = CONVERGED if abs(eps) <= rule.tol else DIVERGED if not lam <= rule.divergence_norm else None
        if done is None and k == rule.max_steps:
            done = MAX_STEPS
        if done is not None:
            return done, k, factor, lam, max_step, a @ a - b @ b
        factor *= 1.0 - (eta * eps) ** 2
        max_step = max(max_step, abs(eta * eps))
        a, b = a - eta * eps * b, b - eta * eps * a


def ab_from_uv(u, v):
    """d = 1 initial points with |a + b|^2 = u and |a - b|^2 = v."""
    s, d = np.sqrt(u), np.sqrt(v)
    return ((s + d) / 2)[:, None], ((s - d) / 2)[:, None]


def assert_runs_equal(x, y):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


# --- the engine -----------------------------------------------------------------------------------

def test_kernel_follows_the_theory_recursion_and_stop_rule():
    u0, v0, eta = random_uv(60)
    u, v, factor, max_step, steps = run_uv_numba(u0, v0, eta, 1.0, RULE.tol, RULE.divergence_norm,
                                                 RULE.max_steps)
    outcomes = set()
    for i in range(u0.size):
        code, k, u_ref, v_ref, f_ref, m_ref = uv_reference(u0[i], v0[i], eta[i], 1.0, RULE)
        outcomes.add(code)
        assert steps[i] == k
        np.testing.assert_allclose([u[i], v[i], factor[i], max_step[i]], [u_ref, v_ref, f_ref, m_ref],
                                   rtol=1e-12, atol=1e-300)
    assert outcomes == {CONVERGED, DIVERGED, MAX_STEPS}


def test_stop_rule_edge_cases():
    # at a minimum: converged with 0 steps; too large or NaN at the start: diverged with 0 steps;
    # max_steps=1: one step, then judged.
    u0 = np.array([4.0, 1e13, np.nan, 3.0, 5.0])
    v0 = np.array([0.0, 1.0, 1.0, 1.0, 0.5])
    eta = np.full(5, 0.1)
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=1)
    runs = simulate(eta, np.arange(5), *ab_from_uv(u0, v0), 1.0, rule)
    assert list(runs.outcome(rule)) == [CONVERGED, DIVERGED, DIVERGED, MAX_STEPS, MAX_STEPS]
    assert list(runs.steps) == [0, 0, 0, 1, 1]
    assert runs.factor[0] == 1.0 and runs.max_step[0] == 0.0


def test_a_run_gives_the_same_bits_wherever_it_is_placed():
    """Lane position, neighbours, chunking and padding do not change a run: the basis of the exact
    distributed merge."""
    u0, v0, eta = random_uv(3000, seed=1)
    ab = ab_from_uv(u0, v0)
    whole = simulate(eta, np.arange(3000), *ab, 1.0, RULE, chunk_size=1000)
    order = np.random.default_rng(2).permutation(3000)[:700]
    part = simulate(eta[order], order, *ab, 1.0, RULE, chunk_size=333)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[order], err_msg=name)


def test_torch_recursion_gives_the_kernel_bits_on_cpu():
    u0, v0, eta = random_uv(500, seed=3)
    ab = ab_from_uv(u0, v0)
    assert_runs_equal(simulate(eta, np.arange(500), *ab, 1.0, RULE, backend="torch"),
                      simulate(eta, np.arange(500), *ab, 1.0, RULE))


def test_torch_paths_are_float64():
    out = run_uv_torch([4.5], [0.3], [0.1], 1.0, 1e-8, 1e12, 5, device="cpu")
    assert all(t.dtype in (torch.float64, torch.int64) for t in out)


@pytest.mark.cuda
def test_cuda_recursion_gives_the_kernel_bits():
    u0, v0, eta = random_uv(20000, seed=4)
    ab = ab_from_uv(u0, v0)
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=3000)
    assert_runs_equal(simulate(eta, np.arange(20000), *ab, 1.0, rule, backend="torch", device="cuda"),
                      simulate(eta, np.arange(20000), *ab, 1.0, rule))
    out = run_uv_torch(u0[:10], v0[:10], eta[:10], 1.0, 1e-8, 1e12, 50, device="cuda")
    assert all(t.device.type == "cuda" for t in out)


def test_imbalance_factor_is_exact_where_runs_converge():
    """P from the recursion equals Q(T)/Q(0) from the final vectors, and lam_GD = sqrt(4 phi^2 + P^2 Qn0^2)."""
    a0, b0 = ab_from_uv(np.array([9.0, 5.0, 2.5]), np.array([2.0, 0.5, 1.5]))
    runs = simulate(np.array([0.05, 0.2, 0.4]), np.arange(3), a0, b0, 1.0, RULE, backend="batched")
    assert (runs.outcome(RULE) == CONVERGED).all()
    qn0 = np.sqrt(((a0 + b0) ** 2).sum(1) * ((a0 - b0) ** 2).sum(1))
    np.testing.assert_allclose(runs.norm, theory.gd_limit_norm(qn0, runs.factor, 1.0), atol=1e-7)
    assert (np.abs(runs.factor) < 1).all()


# --- agreement with single runs (issue 4, item 3) -------------------------------------------------

@pytest.fixture(scope="module")
def figure3_grid():
    return build_grid(load_config(SweepConfig, None, []))


def test_twenty_grid_points_agree_with_single_gd_runs(figure3_grid):
    """The engine against the batched [N, d] GD path and a plain float64 loop, at 20 random points of
    the Figure-3 grid below eta = 1/phi (beyond it the dynamics are chaotic: see the next test)."""
    grid = figure3_grid
    eta_all, index_all = grid.runs()
    candidates = np.flatnonzero(eta_all * grid.phi < 1.0)
    picked = np.random.default_rng(2024).choice(candidates, 20, replace=False)
    eta, index = eta_all[picked], index_all[picked]
    engine = simulate(eta, index, grid.a0, grid.b0, grid.phi, grid.rule)
    batched = simulate(eta, index, grid.a0, grid.b0, grid.phi, grid.rule, backend="batched")
    outcome, outcome_batched = engine.outcome(grid.rule), batched.outcome(grid.rule)
    assert len(set(outcome)) >= 2  # the sample reaches more than one outcome
    for i in range(20):
        a0, b0 = grid.a0[index[i]], grid.b0[index[i]]
        code, steps, factor, lam, max_step, q_final = gd_reference(a0, b0, eta[i], grid.phi, grid.rule)
        assert outcome[i] == outcome_batched[i] == code, (i, OUTCOMES[code])
        assert engine.steps[i] == batched.steps[i] == steps
        # A diverged run's last values are ~1e28, reached by a cubic blow-up that multiplies relative
        # round-off by ~3 each step; everything else agrees to 1e-10.
        rtol = 1e-10 if code != DIVERGED else 1e-6
        for got in (engine, batched):
            np.testing.assert_allclose([got.factor[i], got.norm[i], got.max_step[i]], [factor, lam, max_step],
                                       rtol=rtol)
        if code == CONVERGED:
            q0 = a0 @ a0 - b0 @ b0
            np.testing.assert_allclose(q_final / q0, engine.factor[i], rtol=1e-10)


def test_chaotic_runs_agree_in_outcome_not_in_final_state(figure3_grid):
    """For eta > 1/phi no minimum is stable; round-off grows exponentially, so the two paths end at
    different points of the same attractor; both keep iterating and both collapse the imbalance."""
    grid = figure3_grid
    eta = np.array([1.5, 1.8])
    index = np.array([10, 40])
    rule = StopRule(grid.rule.tol, grid.rule.divergence_norm, 3000)
    engine = simulate(eta, index, grid.a0, grid.b0, grid.phi, rule)
    batched = simulate(eta, index, grid.a0, grid.b0, grid.phi, rule, backend="batched")
    assert (engine.outcome(rule) == MAX_STEPS).all() and (batched.outcome(rule) == MAX_STEPS).all()
    assert (np.abs(engine.factor) < 1e-100).all() and (np.abs(batched.factor) < 1e-100).all()


def test_twenty_grid_points_agree_with_the_lightning_run(figure3_grid, tmp_path):
    """The core single-run path (shallownet.training.fit, a Lightning run) at 20 quick grid points."""
    from shallownet.config import RunConfig
    from shallownet.training import run

    grid = figure3_grid
    eta_all, index_all = grid.runs()
    probe = simulate(eta_all, index_all, grid.a0, grid.b0, grid.phi, grid.rule)
    quick = np.flatnonzero((probe.steps <= 120) & (eta_all < 1.0))
    for i in np.random.default_rng(7).choice(quick, 20, replace=False):
        overrides = [
            f"model.width={grid.a0.shape[1]}", "model.init.scheme=imbalanced", "model.init.imbalance=0.5",
            "model.init.seed=0", f"model.init.scale={float(grid.scale[index_all[i]])!r}", f"model.phi={grid.phi}",
            f"optim.lr={float(eta_all[i])!r}", f"train.max_steps={grid.rule.max_steps}", f"train.tol={grid.rule.tol}",
            f"train.divergence_norm={grid.rule.divergence_norm}", "monitor.dynamics.every_n_steps=1000000",
            "monitor.sharpness.every_n_steps=0",
        ]
        summary = run(load_config(RunConfig, None, overrides), tmp_path / str(i))
        outcome = OUTCOMES[probe.outcome(grid.rule)[i]]
        assert summary["status"] == outcome
        assert summary["steps"] == probe.steps[i]
        np.testing.assert_allclose(summary["final"]["norm"], probe.norm[i], rtol=1e-10)
        np.testing.assert_allclose(summary["final"]["imbalance"] / summary["init"]["imbalance"],
                                   probe.factor[i], rtol=1e-10)


# --- the `shallownet sweep` command ----------------------------------------------------------------

SMALL = ["grid.lr.num=24", "grid.scale.num=20", "train.max_steps=3000", "output.progress=false"]


def test_sweep_command_writes_the_run_folder(cli):
    code, out, err, dirs = cli("sweep", *SMALL, config=CONFIGS / "sweep.yaml")
    assert code == 0, err
    (run,) = dirs
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "grid.npz", "summary.json", "figure3.png", "sharpness.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    grid = np.load(run / "grid.npz")
    assert grid["outcome"].shape == grid["steps"].shape == (24, 20)
    assert list(grid["outcome_names"]) == list(OUTCOMES)
    summary = read_summary(run)
    assert sum(summary["outcomes"].values()) == 24 * 20
    assert min(summary["outcomes"].values()) > 0  # the default ranges reach every outcome
    # Theory checks on the real grid: the Theorem-1 condition guarantees convergence, GD ends no
    # sharper than GF, and the recorded P reproduces the final norm through lam_GD.
    assert summary["theorem1"]["of_which_converged"] == summary["theorem1"]["runs_where_condition_holds"] > 0
    assert summary["gd_flatter_than_gf_where_converged"] == summary["outcomes"]["converged"]
    assert summary["max_abs_final_norm_minus_norm_gd"] < 1e-6
    assert str(run) in out


@pytest.mark.parametrize("override, key", [
    ("grid.lr.num=0", "grid.lr.num"),
    ("grid.lr.stop=0.001", "grid.lr.stop"),  # inverted: stop below start
    ("grid.scale.stop=0.1", "grid.scale.stop"),  # empty range: stop == start with num > 1
    ("grid.lr.start=0", "grid.lr.start"),
    ("grid.lr.start=-0.5", "grid.lr.start"),
    ("grid.lr.num=1000000000", "engine.memory_mb"),  # 3e11 runs: no chunking makes the results fit
    ("engine.memory_mb=1e12", "engine.memory_mb"),  # more than the machine has
    ("engine.backend=jax", "engine.backend"),
    ("engine.device=cuda:7", "engine.device"),
    ("train.tol=0", "train.tol"),
    ("grid.lr.spacing=cubic", "grid.lr.spacing"),
])
def test_bad_input_exits_2_before_any_work(cli, override, key):
    code, out, err, dirs = cli("sweep", override, config=CONFIGS / "sweep.yaml")
    assert code == 2
    assert key in err and len(err.strip().splitlines()) == 1
    assert dirs == []


def test_chunks_shrink_to_the_memory_budget():
    from shallownet.sweep.grid import chunk_size

    cfg = load_config(SweepConfig, CONFIGS / "sweep.yaml", ["engine.backend=batched", "engine.memory_mb=16"])
    validate(cfg)
    assert 1 <= chunk_size(cfg) < cfg.engine.chunk_size
