"""shallownet.orbits: the closed-form Jacobian against autograd, periods and Lyapunov exponents against the
exact period-2 orbits (numpy.roots on the reduced polynomial), and examples/bifurcation.py end to end."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from shallownet.orbits import (
    gd_orbit,
    gd_step,
    jacobian,
    lyapunov,
    orbit_period,
    orbit_periods,
    period_two_orbits,
)
from tests.conftest import REPO

PHI = 1.0
STABLE_ETAS = (1.05, 1.12, 1.2)  # inside the period-2 window 1/Phi < eta < ~1.236 (multiplier < 1 below)


def torch_step(z, phi, eta):
    r = z[0] * z[1] - phi
    return torch.stack([z[0] - eta * r * z[1], z[1] - eta * r * z[0]])


@pytest.mark.parametrize("a, b, phi, eta", [(1.5, 0.2, 1.0, 0.7), (-0.3, 2.1, 0.5, 1.3), (0.9, 1.0, 2.0, 0.05)])
def test_jacobian_is_autograds(a, b, phi, eta):
    auto = torch.func.jacrev(torch_step)(torch.tensor([a, b], dtype=torch.float64), phi, eta).numpy()
    np.testing.assert_allclose(jacobian(a, b, phi, eta), auto, rtol=1e-14, atol=1e-14)
    h = 1e-6  # and a central finite difference, column by column
    fd = np.stack([(np.array(gd_step(a + h * e0, b + h * e1, phi, eta)) - np.array(gd_step(a - h * e0, b - h * e1,
                    phi, eta))) / (2 * h) for e0, e1 in ((1, 0), (0, 1))], -1)
    np.testing.assert_allclose(jacobian(a, b, phi, eta), fd, atol=1e-8)


@pytest.mark.parametrize("eta", [0.3, *STABLE_ETAS, 1.6])
def test_period_two_oracle_points(eta):
    found = period_two_orbits(PHI, eta)
    assert len(found.points) > 0
    for z0, z1 in found.points:
        np.testing.assert_allclose(gd_step(*z0, PHI, eta), z1, rtol=0, atol=1e-12)
        np.testing.assert_allclose(gd_step(*z1, PHI, eta), z0, rtol=0, atol=1e-10)  # F(F(z)) = z
        assert np.linalg.norm(z1 - z0) > 1e-3  # not a fixed point
        assert abs(z0[0]) == pytest.approx(abs(z0[1]), abs=1e-12)  # on a = b or a = -b (module docstring)


@pytest.mark.parametrize("phi", [1.0, 2.0])
def test_period_two_window_from_the_oracle(phi):
    """A stable 2-cycle exists for 1/Phi < eta < (sqrt 5 - 1)/Phi: it is born where the balanced minimum's
    multiplier 1 - 2 eta Phi passes -1 and loses stability at the next period doubling (sqrt 5 - 1, found by
    bisection on the oracle's multiplier, and a 4-cycle beyond it in test_periods_vectorised_and_divergence)."""
    def stable(eta):
        return bool((period_two_orbits(phi, eta).multiplier < 1).any())

    assert not stable((1 - 1e-9) / phi) and stable((1 + 1e-6) / phi)
    lo, hi = 1.1 / phi, 1.3 / phi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    assert lo == pytest.approx((np.sqrt(5) - 1) / phi, abs=1e-9)


@pytest.mark.parametrize("eta", STABLE_ETAS)
def test_gd_converges_to_the_oracles_stable_two_cycle(eta):
    found = period_two_orbits(PHI, eta)
    (k,) = np.flatnonzero(found.multiplier < 1)[:1]
    z0 = found.points[k, 0]
    orbit = gd_orbit(z0[0] + 1e-3, z0[1] - 2e-3, PHI, eta, 3000, 8)  # a nearby start, off the balanced line
    assert not orbit.diverged
    last = orbit.z[-1]
    assert min(np.linalg.norm(last - p) for p in found.points[k]) <= 1e-9
    assert orbit_period(orbit.z, 1e-9) == 2
    # the Lyapunov exponent of a 2-cycle is half the log of its two-step multiplier
    assert lyapunov(*z0, PHI, eta, 2000) == pytest.approx(0.5 * np.log(found.multiplier[k]), abs=1e-3)


def test_periods_vectorised_and_divergence():
    etas = np.array([0.5, 1.1, 1.25, 2.5])  # converges, 2-cycle, 4-cycle, diverges
    orbit = gd_orbit(0.9, 1.0, PHI, etas, 4000, 64)
    assert orbit.z.shape == (64, 4, 2)
    assert orbit.diverged.tolist() == [False, False, False, True]
    assert np.isnan(orbit.z[:, 3]).all()
    assert orbit_periods(orbit.z, 1e-9).tolist() == [1, 2, 4, 0]
    assert orbit_period(orbit.z[:, 3], 1e-9) is None
    lam = lyapunov(0.9, 1.0, PHI, etas, 500, burn=4000)
    assert np.isnan(lam[3]) and (lam[:3] < 1e-6).all()
    assert lyapunov(0.9, 1.0, PHI, 1.8, 4000, burn=4000) > 0.5  # chaos


def test_period_counts_a_hand_made_cycle():
    z = np.tile(np.array([[0.0, 1.0], [2.0, 1.0], [5.0, -1.0]]), (10, 1))
    assert orbit_period(z, 1e-12) == 3
    assert orbit_period(z + np.random.default_rng(0).normal(size=z.shape), 1e-12) is None
    with pytest.raises(ValueError):
        orbit_period(z[None], 1e-12)


def test_bifurcation_example(tmp_path):
    out = tmp_path / "bif.png"
    done = subprocess.run([sys.executable, str(REPO / "examples/bifurcation.py"), "--eta", "0.8", "1.6", "81",
                           "--steps", "4000", "--keep", "64", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 10_000
    lines = {m[1]: m[2] for m in re.finditer(r"init=\((\S+)\) (.*)", done.stdout)}
    assert set(lines) == {"1.5,0.2", "0.9,1"}
    found = {k: dict(kv.split("=") for kv in v.split()) for k, v in lines.items()}
    balanced = found["0.9,1"]
    assert float(balanced["period1"]) == 0.8
    assert 0.98 <= float(balanced["period2"]) <= 1.01  # eta = 1/Phi
    assert 1.22 <= float(balanced["period4"]) <= 1.25
    assert 1.28 <= float(balanced["chaos"]) <= 1.35
    assert float(balanced["max_lyapunov"]) > 0.3
    assert found["1.5,0.2"]["chaos"] == "none"


@pytest.mark.parametrize("args, word", [(["--init", "1,x"], "--init"), (["--phi", "x"], "--phi"),
                                        (["--eta", "1", "0.5", "10"], "--eta"), (["--keep", "0"], "--keep")])
def test_bifurcation_example_bad_input(tmp_path, args, word):
    out = tmp_path / "x.png"
    done = subprocess.run([sys.executable, str(REPO / "examples/bifurcation.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and word in done.stderr
    assert not out.exists()
