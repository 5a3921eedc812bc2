"""The chain engine (depth-L scalar chains, theory.md 8.2) against plain GD, the shallow engine at L = 2,
the torch path, the fused CUDA kernels (numba's simulator here, the GPU under -m cuda) and theory."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shallownet import deep_theory
from shallownet.sweep.chain import (
    chain_grid,
    chain_hessian,
    chain_initial_weights,
    chain_records,
    chain_sharpness,
    chain_summary,
    run_chain_grid,
    run_chain_torch,
    save_chain_npz,
    simulate_chain,
)
from shallownet.sweep.chain_kernel import flops_per_config_step, run_chain_numba
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS, StopRule, simulate
from tests.conftest import REPO

# An odd budget: the kernels take two steps per pass over a block and the last one alone.
RULE = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=401)
FIELDS = ("residual", "norm", "factor", "max_step", "steps", "weights")


def random_runs(depth, n, seed=0):
    """Initial weights and steps reaching every outcome: mostly below the stability threshold
    2 / (L Phi^(2-2/L)) (converged or slow), a few with large steps from large scales (diverged)."""
    rng = np.random.default_rng(seed)
    w0 = rng.uniform(0.2, 1.7, (n, depth))
    eta = rng.uniform(0.01, 1.0, n) * float(deep_theory.stability_threshold(depth, 1.0))
    w0[: n // 8] *= 2.5
    eta[: n // 8] *= 3.0
    return w0, eta


def plain_gd(w, eta, phi, rule):
    """One run, one step at a time, with deep_theory's GD step, the stop rule written out and the factor
    of w_1^2 - w_L^2 from theory.md 8.2: (outcome, steps, w, P, max eta|eps_t|)."""
    factor, top = 1.0, 0.0
    for k in range(rule.max_steps + 1):
        eps, norm = math.prod(w) - phi, float(w @ w)
        if abs(eps) <= rule.tol:
            return CONVERGED, k, w, factor, top
        if not norm <= rule.divergence_norm:
            return DIVERGED, k, w, factor, top
        if k == rule.max_steps:
            return MAX_STEPS, k, w, factor, top
        factor *= 1.0 - (eta * eps) ** 2 * math.prod(w[1:-1]) ** 2
        top = max(top, abs(eta * eps))
        w = deep_theory.chain_gd_step(w, eta, phi)


def assert_runs_equal(x, y):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


# --- the engine against plain GD, the stop rule and itself ---------------------------------------------

@pytest.mark.parametrize("depth", [2, 3, 4, pytest.param(6, marks=pytest.mark.slow)])
def test_engine_follows_plain_gd_run_by_run(depth):
    w0, eta = random_runs(depth, 40, seed=depth)
    runs = simulate_chain(eta, w0, 1.0, RULE)
    outcome = runs.outcome(RULE)
    assert set(outcome) == {CONVERGED, DIVERGED, MAX_STEPS}
    for i in range(eta.size):
        code, steps, w, factor, top = plain_gd(w0[i], eta[i], 1.0, RULE)
        assert (outcome[i], runs.steps[i]) == (code, steps), i
        if code != DIVERGED:  # a blow-up multiplies relative round-off every step
            np.testing.assert_allclose(np.r_[runs.weights[i], runs.factor[i], runs.max_step[i], runs.norm[i]],
                                       np.r_[w, factor, top, w @ w], rtol=1e-12, atol=0)


def test_stop_rule_edge_cases():
    """At a minimum: converged, 0 steps. Norm above the threshold, NaN or inf at the start: diverged, 0
    steps, the state untouched (also where 0 * inf would make NaN). max_steps = 1: one step, then judged."""
    w0 = np.array([[1.0, 1.0, 1.0], [2e6, 1.0, 1.0], [np.nan, 1.0, 1.0], [1e200, 1e200, 1.0], [np.inf, 1.0, 1.0],
                   [1.2, 1.0, 1.0], [0.0, 0.0, 0.0]])
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=1)
    runs = simulate_chain(np.full(7, 0.1), w0, 1.0, rule)
    assert list(runs.outcome(rule)) == [CONVERGED, DIVERGED, DIVERGED, DIVERGED, DIVERGED, MAX_STEPS, MAX_STEPS]
    assert list(runs.steps) == [0, 0, 0, 0, 0, 1, 1]
    np.testing.assert_array_equal(runs.weights[:5], w0[:5])
    assert list(runs.factor[:5]) == [1.0] * 5 and list(runs.max_step[:5]) == [0.0] * 5
    np.testing.assert_array_equal(runs.weights[6], 0.0)  # the saddle at 0: no gradient, no move


def test_a_run_gives_the_same_bits_wherever_it_is_placed():
    w0, eta = random_runs(4, 1500, seed=1)
    whole = simulate_chain(eta, w0, 1.0, RULE, chunk_size=700)
    order = np.random.default_rng(2).permutation(1500)[:500]
    part = simulate_chain(eta[order], w0, 1.0, RULE, init_index=order, chunk_size=333)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[order], err_msg=name)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_torch_path_gives_the_kernel_bits_on_cpu(depth):
    w0, eta = random_runs(depth, 300, seed=3)
    assert_runs_equal(simulate_chain(eta, w0, 1.0, RULE, backend="torch"), simulate_chain(eta, w0, 1.0, RULE))
    out = run_chain_torch(w0[:3], eta[:3], 1.0, 1e-8, 1e12, 5)
    assert str(out[0].dtype) == "torch.float64" and out[0].shape == (3, depth)


def test_depth_two_agrees_with_the_shallow_engine():
    """L = 2 against shallownet.sweep.engine.simulate (width 1, a0 = w_1, b0 = w_2) on a Figure-3-like grid:
    outcomes all equal; steps equal wherever eta < 1/phi (beyond it round-off differences are amplified by
    the chaos and decide on which step a run blows up); final state equal to round-off where converged."""
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=3000)
    grid = chain_grid(np.geomspace(0.01, 2.0, 40), np.geomspace(0.1, 3.0, 40), 2, 1.0, rule)
    chain = run_chain_grid(grid)
    eta, index = grid.runs()
    shallow = simulate(eta, index, grid.w0[:, :1], grid.w0[:, 1:], 1.0, rule)
    outcome = chain.outcome(rule)
    np.testing.assert_array_equal(outcome, shallow.outcome(rule))
    assert set(outcome) == {CONVERGED, DIVERGED, MAX_STEPS}
    np.testing.assert_array_equal(chain.steps[eta < 1.0], shallow.steps[eta < 1.0])
    done = outcome == CONVERGED
    np.testing.assert_allclose(chain.residual[done], shallow.residual[done], rtol=0, atol=1e-13)
    np.testing.assert_allclose(chain.norm[done], shallow.norm[done], rtol=1e-11)
    np.testing.assert_allclose(chain.factor[done], shallow.factor[done], rtol=0, atol=1e-11)
    np.testing.assert_allclose(chain.max_step[done], shallow.max_step[done], rtol=1e-12)


def test_imbalance_factor_is_the_ratio_of_the_end_to_end_imbalance():
    """P (product of per-step factors) = (w_1^2 - w_L^2)(T) / (w_1^2 - w_L^2)(0) where runs converge; the
    other pairs shrink by other factors, and GF would keep them all."""
    w0 = chain_initial_weights([0.8, 1.1, 1.3], 4, "random", 0.6, seed=4)
    runs = simulate_chain(np.array([0.05, 0.15, 0.3]), w0, 1.0, RULE)
    assert (runs.outcome(RULE) == CONVERGED).all()
    ratio = (runs.weights[:, 0] ** 2 - runs.weights[:, -1] ** 2) / (w0[:, 0] ** 2 - w0[:, -1] ** 2)
    np.testing.assert_allclose(runs.factor, ratio, rtol=1e-9)
    assert (np.abs(runs.factor) < 1).all()


# --- records, theory checks, figures ------------------------------------------------------------------

def test_hessian_and_sharpness_match_deep_theory():
    w = np.random.default_rng(5).uniform(-1.5, 1.5, (6, 4))
    hess = chain_hessian(w, 0.7)
    for i in range(6):
        np.testing.assert_allclose(hess[i], deep_theory.chain_hessian(w[i], 0.7), rtol=1e-14, atol=1e-14)
        assert chain_sharpness(w, 0.7)[i] == pytest.approx(deep_theory.chain_sharpness(w[i], 0.7), rel=1e-13)
    w_min = deep_theory.balanced_chain_minimum(4, 2.0)[None]  # at the balanced minimum: L |Phi|^(2-2/L)
    assert chain_sharpness(w_min, 2.0)[0] == pytest.approx(float(deep_theory.least_sharpness(4, 2.0)), rel=1e-13)
    assert np.isnan(chain_sharpness(np.array([[np.inf, 1.0, 1.0, 1.0]]), 1.0)[0])


def test_init_schemes():
    scale = np.array([0.5, 2.0])
    w = chain_initial_weights(scale, 5, "imbalanced", 0.4)
    np.testing.assert_allclose((w * w).sum(1), 5 * scale**2, rtol=1e-14)
    np.testing.assert_allclose(w[:, 0] ** 2 - w[:, -1] ** 2, 2 * 0.4 * scale**2, rtol=1e-14)
    # L = 2 is the shallow engine's imbalanced init at width 1 (up to the random signs it draws)
    from shallownet.model import initial_vectors

    a, b = initial_vectors(1, "imbalanced", 0.7, 0, 0.4)
    np.testing.assert_allclose(chain_initial_weights([0.7], 2, "imbalanced", 0.4)[0], [abs(a[0]), abs(b[0])],
                               rtol=1e-15)
    np.testing.assert_array_equal(chain_initial_weights(scale, 3, "balanced"), np.repeat(scale[:, None], 3, 1))
    r1, r2 = chain_initial_weights(scale, 4, "random", 0.5, 7), chain_initial_weights(scale, 4, "random", 0.5, 7)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(r1[1] / r1[0], 4.0)  # one pattern, scaled
    for bad in (dict(scheme="gaussian"), dict(imbalance=1.0)):
        with pytest.raises(ValueError):
            chain_initial_weights(scale, 3, **bad)


@pytest.fixture(scope="module")
def small_sweep():
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=4000)
    grid = chain_grid(np.geomspace(0.01, 1.0, 24), np.geomspace(0.4, 1.6, 20), 3, 1.0, rule)
    runs = run_chain_grid(grid)
    return grid, runs, chain_records(grid, runs)


def test_records_and_summary_hold_the_theory(small_sweep, tmp_path):
    grid, runs, recs = small_sweep
    assert recs["outcome"].shape == recs["steps"].shape == recs["final_sharpness"].shape == (24, 20)
    assert recs["final_weights"].shape == (24, 20, 3)
    least = float(deep_theory.least_sharpness(3, 1.0))
    assert float(recs["least_sharpness"]) == least and float(recs["stability_threshold"]) == 2 / least
    np.testing.assert_allclose(recs["gf_sharpness"], deep_theory.chain_gf_solution_sharpness(grid.w0, 1.0))
    summary = chain_summary(grid, recs)
    assert sum(summary["outcomes"].values()) == 24 * 20
    assert min(summary["outcomes"].values()) > 0
    converged = recs["outcome"] == CONVERGED
    # every converged run sits (to O(tol)) on a minimum: no sharpness below the least over all minima
    assert summary["converged_below_least_sharpness"] == 0
    assert (recs["sharpness_over_least"][converged] > 1 - 1e-6).all()
    # no minimum is stable beyond eta = 2 / (L Phi^(2-2/L)) (theory.md 8.2)
    assert summary["converged_beyond_stability_threshold"] == 0
    # the smallest step is nearly gradient flow: it ends near where GF ends, with about GF's sharpness
    np.testing.assert_allclose(recs["sharpness_over_gf"][0][converged[0]], 1.0, atol=1e-2)
    # P is the end-to-end imbalance ratio where the runs converged
    np.testing.assert_allclose(recs["imbalance_ratio"][converged], recs["imbalance_ratio_from_states"][converged],
                               rtol=1e-8)
    save_chain_npz(tmp_path / "chain.npz", recs)
    back = np.load(tmp_path / "chain.npz")
    np.testing.assert_array_equal(back["outcome"], recs["outcome"])


def test_figures_are_drawn(small_sweep, tmp_path):
    from shallownet.sweep.chain_figures import save_chain_figures

    _, _, recs = small_sweep
    paths = save_chain_figures(recs, tmp_path, 4000, 1e-8, dpi=40)
    assert [p.name for p in paths] == ["chain_maps.png", "chain_sharpness.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_flop_count():
    assert flops_per_config_step(2) == 14 and flops_per_config_step(4) == 30


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="backend"):
        simulate_chain([0.1], [[1.0, 1.0]], 1.0, RULE, backend="jax")
    with pytest.raises(ValueError, match="depth"):
        simulate_chain([0.1], [[1.0]], 1.0, RULE)
    with pytest.raises(ValueError, match="depth"):
        run_chain_numba(np.ones((1, 1)), [0.1], 1.0, 1e-8, 1e12, 1)


# --- the fused CUDA kernels ---------------------------------------------------------------------------

SIMULATOR_CHECK = textwrap.dedent("""
    import numpy as np
    from shallownet.sweep.cuda_kernels import run_chain_cuda, run_uv_cuda, simulator_enabled
    from shallownet.sweep.chain_kernel import run_chain_numba
    from shallownet.sweep.kernel import run_uv_numba
    assert simulator_enabled()
    rng = np.random.default_rng(0)
    u0, v0, eta = rng.uniform(0, 12, 48), rng.uniform(0, 6, 48), rng.uniform(0.01, 1.6, 48)
    u0[:4], v0[3] = [4.0, 1e13, np.nan, 1e-310], 1e13  # converged, diverged, NaN, subnormal U stopped at 0
    args = (1.0, 1e-8, 1e12, 120)
    for got, want in zip(run_uv_cuda(u0, v0, eta, *args), run_uv_numba(u0, v0, eta, *args)):
        assert np.array_equal(got, want, equal_nan=True)
    for depth in (2, 3, 4):
        w0 = rng.uniform(0.2, 1.7, (40, depth))
        eta = rng.uniform(0.05, 1.2, 40) * 2 / depth
        w0[:5] *= 2.5
        w0[5] = np.nan
        w0[6] = 1.0
        got, want = run_chain_cuda(w0, eta, *args), run_chain_numba(w0, eta, *args)
        for x, y in zip(got, want):
            assert np.array_equal(x, y, equal_nan=True), depth
        steps = want[3]
        assert steps.min() == 0 and steps.max() == 120 and 0 < np.median(steps) < 120
    print("simulator: same bits")
""")


def test_cuda_kernels_give_the_cpu_bits_in_the_simulator():
    """numba's CUDA simulator (set before numba is imported, hence a subprocess) runs the fused kernels as
    Python: their logic against the CPU kernels, bit for bit, on a tiny grid."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SIMULATOR_CHECK], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "simulator: same bits" in done.stdout


def test_cuda_module_imports_without_a_gpu():
    from shallownet.sweep import cuda_kernels

    if not cuda_kernels.cuda_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            cuda_kernels.run_chain_cuda(np.ones((1, 3)), [0.1], 1.0, 1e-8, 1e12, 1)


@pytest.mark.cuda
@pytest.mark.parametrize("depth", [2, 3, 4, 6])
def test_cuda_chain_kernel_gives_the_cpu_bits(depth):
    w0, eta = random_runs(depth, 20000, seed=10 + depth)
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=3000)
    assert_runs_equal(simulate_chain(eta, w0, 1.0, rule, backend="cuda"), simulate_chain(eta, w0, 1.0, rule))


@pytest.mark.cuda
def test_cuda_uv_kernel_gives_the_cpu_bits():
    from shallownet.sweep.cuda_kernels import run_uv_cuda
    from shallownet.sweep.kernel import run_uv_numba

    rng = np.random.default_rng(4)
    u0, v0, eta = rng.uniform(0.0, 12.0, 20000), rng.uniform(0.0, 6.0, 20000), rng.uniform(0.01, 1.6, 20000)
    args = (1.0, 1e-8, 1e12, 3000)
    for got, want in zip(run_uv_cuda(u0, v0, eta, *args), run_uv_numba(u0, v0, eta, *args), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.cuda
def test_cuda_kernels_hold_no_fused_multiply_add():
    from shallownet.sweep.cuda_kernels import chain_ptx, uv_ptx

    for ptx in (uv_ptx(), chain_ptx(4)):
        assert "fma.rn.f64" not in ptx and "mul.rn.f64" in ptx
        assert "ld.local" not in ptx  # the chain's per-run arrays live in registers


@pytest.mark.cuda
def test_torch_chain_path_gives_the_kernel_bits_on_cuda():
    w0, eta = random_runs(4, 20000, seed=6)
    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=1000)
    assert_runs_equal(simulate_chain(eta, w0, 1.0, rule, backend="torch", device="cuda"),
                      simulate_chain(eta, w0, 1.0, rule))
