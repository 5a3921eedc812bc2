"""`shallownet figure1`: the paths it draws obey theory.md, and the image lands in PNG and TensorBoard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shallownet import events, theory
from shallownet.figure1 import process_path
from shallownet.processes.descent import GradientDescentProcess, Momentum
from shallownet.processes.flows import GradientFlow
from shallownet.stop import CONVERGED, DIVERGED, MAX_STEPS, StopRule

RULE = StopRule(1e-10, 1e12, 500)


def test_gf_path_stays_on_its_hyperbola_and_ends_at_the_closed_form():
    a0, b0 = 1.9, -0.4
    path, outcome = process_path(a0, b0, 1.0, GradientFlow(rtol=1e-10, atol=1e-12, max_step=0.02),
                                 StopRule(1e-10, 1e12, 10**6, 100.0))
    assert outcome == CONVERGED and len(path) > 50  # max_step keeps the drawn path smooth
    np.testing.assert_allclose(path[:, 0] ** 2 - path[:, 1] ** 2, a0 * a0 - b0 * b0, rtol=0, atol=1e-10)
    a_gf, b_gf = theory.gf_limit([a0], [b0], 1.0)
    np.testing.assert_allclose(path[-1], [a_gf[0], b_gf[0]], rtol=0, atol=1e-9)


def test_gd_path_follows_the_recursions():
    eta, phi = 0.45, 1.0
    path, outcome = process_path(1.9, -0.4, phi, GradientDescentProcess(lr=eta), RULE)
    assert outcome == CONVERGED
    a, b = path[:, 0], path[:, 1]
    eps, q = a * b - phi, a * a - b * b
    np.testing.assert_allclose(q[1:], theory.imbalance_factor_step(eps[:-1], eta) * q[:-1], rtol=0, atol=1e-13)
    assert abs(q[-1]) < abs(q[0])  # it crossed to a hyperbola closer to a = b


def test_figure1_command_writes_png_tensorboard_image_and_summary(cli):
    code, out, err, dirs = cli("figure1")
    assert code == 0, err
    run_dir = dirs[0]
    png = run_dir / "figure1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert "figure1" in events.load(run_dir).Tags()["images"]
    result = json.loads((run_dir / "summary.json").read_text())
    for init in ([1.9, -0.4], [0.3, -1.6]):
        paths = [p for p in result["paths"] if p["init"] == init]
        gf, gds = paths[-1], paths[:-1]
        assert gf["process"] == "flow_max_step=0.02" and gf["imbalance_ratio"] == pytest.approx(1.0, abs=1e-9)
        assert len(gds) == 3
        for gd in gds:  # every GD limit lies on ab = phi, flatter than GF's
            assert gd["outcome"] == CONVERGED and 0 < gd["imbalance_ratio"] < 1
            assert gd["end"][0] * gd["end"][1] == pytest.approx(1.0, abs=1e-9)
            assert gd["norm"] < gf["norm"]
    assert "figure:" in out


def test_figure1_reports_a_diverging_step_size(cli):
    code, out, err, dirs = cli("figure1", "processes=[{method: gd, lr: 0.2}, {method: gd, lr: 2.0},"
                               " {method: flow, max_step: 0.05}]", "inits=[[1.9,-0.4]]")
    assert code == 0, err
    outcomes = {p["process"]: p["outcome"] for p in json.loads((dirs[0] / "summary.json").read_text())["paths"]}
    assert outcomes == {"flow_max_step=0.05": CONVERGED, "gd_lr=0.2": CONVERGED, "gd_lr=2": DIVERGED}
    assert "diverged" in out


@pytest.mark.parametrize("override, key", [
    ("processes=[]", "processes"), ("processes=[{method: gd, lr: 0.1}, {method: gd, lr: -0.1}]", "processes[1].lr"),
    ("processes=[{method: flow}]", "processes[0].max_step"), ("lrs=[0.1]", "lrs"), ("tol=1e-3", "tol"),
    ("flow_max_step=0.1", "flow_max_step"), ("inits=[[1.0,-1.0]]", "inits[0]"),
    ("inits=[[1.0]]", "inits[0]"), ("phi=0", "phi"), ("extent=0", "extent"),
    ("inits=[[1e200,1]]", "inits[0]"), ("inits=[[1e-300,1e-300]]", "inits[0]"), ("phi=1e300", "phi"),
])
def test_figure1_rejects_bad_input(cli, override, key):
    code, out, err, dirs = cli("figure1", override)
    assert code == 2 and err.count("\n") == 1 and f"'{key}'" in err
    assert dirs == []


def test_figure1_runs_at_the_edges_of_the_magnitudes_it_takes(cli):
    """1e50 and 1e-50 are allowed: the run ends in an outcome (the large init diverges under GD), not a crash."""
    code, out, err, dirs = cli("figure1", "inits=[[1e50,1],[1e-50,1e-50]]", "phi=1e-50")
    assert code == 0, err
    outcomes = [p["outcome"] for p in json.loads((dirs[0] / "summary.json").read_text())["paths"]]
    assert len(outcomes) == 8 and all(o in (CONVERGED, DIVERGED, MAX_STEPS) for o in outcomes)


def test_momentum_path_ends_on_the_minima_with_a_smaller_imbalance():
    """Heavy ball from zero velocity, drawn like GD: it ends on ab = phi with Q shrunk (docs/theory.md)."""
    path, outcome = process_path(1.9, -0.4, 1.0, Momentum(lr=0.1, momentum=0.6), RULE)
    assert outcome == CONVERGED
    a, b = path[-1]
    assert a * b == pytest.approx(1.0, abs=1e-9) and 0 < (a * a - b * b) / (1.9**2 - 0.4**2) < 1
