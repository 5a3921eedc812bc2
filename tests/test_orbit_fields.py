"""The sweep's orbit fields (orbit_period, lyapunov in grid.npz): against shallownet.orbits at width 1, against the
exact period-2 orbits and their multipliers, the chains' tangent map against their dense Hessian, and the command."""

from __future__ import annotations

import numpy as np
import pytest

from shallownet import deep_theory
from shallownet.orbits import gd_orbit, lyapunov, orbit_periods, period_two_orbits
from shallownet.sweep.chain import chain_hessian
from shallownet.sweep.orbit_fields import (
    NOT_ANALYSED,
    chain_orbit_fields,
    chain_tangent_map,
    shallow_orbit_fields,
)
from tests.conftest import CONFIGS, read_summary

PHI = 1.0


def state(a, b):
    """The sweep's final state (residual, norm) of width-1 points (a, b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a * b - PHI, a * a + b * b


ETAS = np.array([1.1, 1.25, 1.35, 1.455])  # a 2-cycle, a 4-cycle, chaos, inside the period-3 window


def settled():
    """Width-1 points where GD from (0.9, 1.0) stands after 20000 steps at ETAS (a sweep's run at its budget),
    put in the reduced form a = (|a + b| + |a - b|)/2, b = (|a + b| - |a - b|)/2 (a >= b >= 0)."""
    z = gd_orbit(0.9, 1.0, PHI, ETAS, 20000, 1).z[-1]
    big, small = np.abs(z[:, 0] + z[:, 1]), np.abs(z[:, 0] - z[:, 1])
    return (big + small) / 2, (big - small) / 2


def test_shallow_fields_are_the_width_one_orbits():
    """Reduced points are their own reduction: period and exponent are shallownet.orbits' on them. The exponent over
    60 steps only: rebuilding (a, b) from (residual, norm) moves them by round-off, which chaos (exponent ~0.27 at
    eta = 1.35) would blow up to O(1) over a few hundred."""
    a, b = settled()
    residual, norm = state(a, b)
    short = shallow_orbit_fields(residual, norm, ETAS, PHI, np.ones(4, bool), 60, 1e-7, 1e12)
    np.testing.assert_allclose(short["lyapunov"], lyapunov(a, b, PHI, ETAS, 60), rtol=1e-7)
    fields = shallow_orbit_fields(residual, norm, ETAS, PHI, np.ones(4, bool), 300, 1e-7, 1e12)
    np.testing.assert_array_equal(fields["orbit_period"], orbit_periods(gd_orbit(a, b, PHI, ETAS, 300, 300).z, 1e-7))
    np.testing.assert_array_equal(fields["orbit_period"], [2, 4, 0, 3])
    assert fields["lyapunov"][2] > 0.1 and (fields["lyapunov"][[0, 1, 3]] < 0).all()


@pytest.mark.parametrize("eta", [1.05, 1.12, 1.2])
def test_a_settled_two_cycle_has_period_two_and_the_oracles_exponent(eta):
    """After the transient, the exponent over K steps is half the log of the stable 2-cycle's multiplier
    (the exact orbit from numpy.roots), to O(1/K)."""
    a, b = np.array([0.9, 1.3]), np.array([0.8, 0.2])
    tail = gd_orbit(a, b, PHI, eta, 20000, 1).z[-1]  # where a sweep's run stands at its budget
    residual, norm = state(tail[:, 0], tail[:, 1])
    fields = shallow_orbit_fields(residual, norm, np.full(2, eta), PHI, np.ones(2, bool), 4096, 1e-7, 1e12)
    oracle = period_two_orbits(PHI, eta)
    stable = oracle.multiplier[oracle.multiplier < 1]
    assert stable.size > 0
    np.testing.assert_array_equal(fields["orbit_period"], 2)
    gap = np.abs(fields["lyapunov"][:, None] - 0.5 * np.log(stable)[None, :]).min(axis=1)
    assert (gap < 1e-3).all(), (fields["lyapunov"], 0.5 * np.log(stable))
    assert (fields["lyapunov"] < 0).all()


def test_only_runs_at_the_budget_are_analysed_and_divergence_is_no_period():
    residual, norm = state([0.9, 0.9, 3.0], [1.0, 1.0, 2.9])
    fields = shallow_orbit_fields(residual, norm, np.array([1.1, 1.35, 1.9]), PHI, np.array([False, True, True]),
                                  256, 1e-7, 1e12)
    assert fields["orbit_period"][0] == NOT_ANALYSED and np.isnan(fields["lyapunov"][0])
    assert fields["orbit_period"][1] == 0 and fields["lyapunov"][1] > 0  # chaos at eta = 1.35 (docs/guide/orbits.md)
    assert fields["orbit_period"][2] == 0 and np.isnan(fields["lyapunov"][2])  # diverges within the 256 steps


def test_chain_tangent_map_is_identity_minus_eta_times_the_dense_hessian():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 5))
    w[2, 3] = 0.0  # a zero weight: the product rule needs no division
    t = rng.normal(size=(6, 5))
    eta = rng.uniform(0.1, 1.0, 6)
    dense = np.eye(5) - eta[:, None, None] * chain_hessian(w, PHI)
    np.testing.assert_allclose(chain_tangent_map(w, t, eta, PHI), np.einsum("nij,nj->ni", dense, t),
                               rtol=1e-12, atol=1e-12)


def test_depth_two_chain_fields_are_the_shallow_nets():
    every = np.ones(4, bool)
    a, b = settled()
    residual, norm = state(a, b)
    w = np.stack([a, b], axis=1)
    np.testing.assert_allclose(deep_theory.chain_gd_step(w, ETAS, PHI)[:, 0], a - ETAS * (a * b - PHI) * b,
                               rtol=1e-15)
    for steps, rtol in ((60, 1e-7), (300, None)):  # exponents over 60 steps (see above), periods over 300
        shallow = shallow_orbit_fields(residual, norm, ETAS, PHI, every, steps, 1e-7, 1e12)
        chain = chain_orbit_fields(w, ETAS, PHI, every, steps, 1e-7, 1e12)
        np.testing.assert_array_equal(chain["orbit_period"], shallow["orbit_period"])
        if rtol:
            np.testing.assert_allclose(chain["lyapunov"], shallow["lyapunov"], rtol=rtol)
    np.testing.assert_array_equal(chain["orbit_period"], [2, 4, 0, 3])


SMALL = ("grid.lr.num=40", "grid.lr.start=0.5", "grid.scale.num=12", "train.max_steps=3000", "output.progress=false")


@pytest.mark.parametrize("depth", [2, 3])
def test_the_sweep_writes_orbit_fields_summary_and_figure(cli, depth):
    extra = () if depth == 2 else ("init.depth=3", "init.width=1")
    code, out, err, (run,) = cli("sweep", *SMALL, *extra, config=CONFIGS / "sweep.yaml")
    assert code == 0, err
    grid = np.load(run / "grid.npz")
    period, exponent, outcome = grid["orbit_period"], grid["lyapunov"], grid["outcome"]
    at_budget = outcome == list(grid["outcome_names"]).index("max_steps")
    assert at_budget.any() and (~at_budget).any()
    assert (period[~at_budget] == NOT_ANALYSED).all() and np.isnan(exponent[~at_budget]).all()
    assert (period[at_budget] >= 0).all()
    orbits = read_summary(run)["orbits"]
    assert orbits["analysed"] == int(at_budget.sum())
    assert sum(orbits["periods"].values()) + orbits["no_period_found"] == orbits["analysed"]
    assert orbits["periods"].get("2", 0) > 0  # past the edge, below chaos: 2-cycles
    assert (run / "orbits.png").stat().st_size > 10_000


def test_orbit_steps_zero_turns_it_off_and_bad_values_are_refused(cli):
    code, _, err, (run,) = cli("sweep", *SMALL, "orbit.steps=0", config=CONFIGS / "sweep.yaml")
    assert code == 0, err
    assert "orbit_period" not in np.load(run / "grid.npz") and not (run / "orbits.png").exists()
    assert "orbits" not in read_summary(run)
    for bad, key in (("orbit.steps=-1", "orbit.steps"), ("orbit.tol=0", "orbit.tol")):
        code, _, err, dirs = cli("sweep", *SMALL, bad, config=CONFIGS / "sweep.yaml")
        assert code == 2 and key in err and len(err.strip().splitlines()) == 1
        assert len(dirs) == 1  # only the first run's folder
