"""`shallownet compare` and the TheoryMonitor: GD and GF runs against theory.md's limits and recursions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shallownet import events, theory
from shallownet.callbacks.theory import TheoryMonitor
from shallownet.config import RunConfig, load_config
from shallownet.stop import CONVERGED, DIVERGED
from shallownet.training import build, run

SMALL = ["model.width=4", "processes=[{method: gd, lr: 0.2}, {method: gd, lr: 0.45}, {method: flow}]",
         "train.max_steps=500"]


def read_result(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


# --- the command -------------------------------------------------------------------------------------

def test_compare_runs_gd_and_gf_from_one_init_against_theory(cli):
    code, out, err, dirs = cli("compare", *SMALL)
    assert code == 0, err
    assert len(dirs) == 1
    run_dir = dirs[0]
    result = read_result(run_dir)
    rows = {row["run"]: row for row in result["rows"]}
    assert list(rows) == ["gd_lr=0.2", "gd_lr=0.45", "flow"]
    assert "lam_GF = sqrt(4 phi^2 + Qn0^2)" in out and "gd_lr=0.45" in out
    qn0, phi = result["init"]["imbalance_norm"], result["phi"]
    lam_gf = math.sqrt(4 * phi * phi + qn0 * qn0)
    assert result["theory"]["norm_gf"] == pytest.approx(lam_gf, rel=1e-15)
    for name, row in rows.items():
        assert row["outcome"] == CONVERGED
        # |eps| <= tol = 1e-10 at the end: the measured limit is theory's to ~1e-10
        assert row["rel_error_norm"] <= 1e-9 and row["rel_error_sharpness"] <= 1e-8
        assert (run_dir / name / "last.ckpt").is_file()
    gf = rows["flow"]
    assert gf["theory_norm"] == pytest.approx(lam_gf, rel=1e-15)
    assert gf["imbalance_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert gf["grad_evals"] > gf["steps"] and gf["time"] > 0
    for lr in (0.2, 0.45):
        gd = rows[f"gd_lr={lr:g}"]
        assert gd["imbalance_ratio"] == pytest.approx(gd["factor"], abs=1e-10)  # Q(T)/Q(0) = P
        assert gd["theory_norm"] == pytest.approx(math.sqrt(4 * phi * phi + (gd["factor"] * qn0) ** 2), rel=1e-15)
        assert gd["final_norm"] < gf["final_norm"]  # GD ends flatter
        assert gd["time"] == pytest.approx(lr * gd["steps"])
        # one shared x-axis, time / time_unit (the smallest lr): GD at round(eta k / 0.2), GF at round(t / 0.2)
        steps, _ = events.read_metrics(run_dir / gd["run"])["dynamics/residual"]
        assert steps[-1] == round(lr * gd["steps"] / 0.2)
        assert "theory/imbalance_factor" in events.read_metrics(run_dir / gd["run"])
    steps, _ = events.read_metrics(run_dir / "flow")["dynamics/residual"]
    assert steps[-1] == round(gf["time"] / 0.2)


def test_compare_reports_processes_out_of_time(cli):
    code, out, err, dirs = cli("compare", *SMALL, "processes=[{method: gd, lr: 0.3}, {method: flow}]",
                               "train.max_time=0.5")
    assert code == 0, err
    gd, gf = read_result(dirs[0])["rows"]
    assert gf["outcome"] == "max_time" and gf["time"] == 0.5  # the flow lands on the budget exactly
    assert gd["outcome"] == "max_time" and gd["steps"] == 2 and gd["time"] == pytest.approx(0.6)  # first lr k >= 0.5
    assert gf["theory_norm"] is None and gf["rel_error_norm"] is None  # no limit to compare with
    assert "max_time" in out


@pytest.mark.parametrize("override, key", [
    ("processes=[]", "processes"),
    ("processes=[{method: gd, lr: 0.1}, {method: gd, lr: 0.0}]", "processes[1].lr"),
    ("processes=[{method: gd, lr: -0.3}]", "processes[0].lr"),
    ("processes=[{method: gd, lr: 0.1}, {method: gd, lr: 0.1}]", "processes"),
    ("processes=[{lr: 0.1}]", "processes[0]"),
    ("processes=[{method: sgdd}]", "processes[0].method"),
    ("processes=[{method: flow, lr: 0.1}]", "processes[0].lr"),
    ("processes=[{method: flow, rtol: -1e-3}]", "processes[0].rtol"),
    ("processes=[{method: adam, betas: [0.9, 1.0]}]", "processes[0].betas[1]"),
    ("processes=[{method:gd}]", "processes[0]"),
    ("train.max_time=0", "train.max_time"),
    ("train.time_unit=0", "train.time_unit"),
    ("train.resume=runs/x", "train.resume"),
    ("gd.lrs=[0.1]", "gd"),
    ("gf.max_time=1", "gf"),
    ("time_unit=0.1", "time_unit"),
])
def test_compare_rejects_bad_input_with_one_line_and_no_folder(cli, override, key):
    code, out, err, dirs = cli("compare", override)
    assert code == 2
    assert err.count("\n") == 1 and f"'{key}'" in err
    assert dirs == []


# --- TheoryMonitor -----------------------------------------------------------------------------------

def gd_config(*overrides: str):
    return load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", "train.max_steps=400", *overrides])


@settings(max_examples=5, deadline=None)
@given(st.integers(1, 6), st.integers(0, 1000), st.floats(0.2, 0.9), st.floats(0.4, 1.5))
def test_theory_monitor_predictions_match_gd(tmp_path_factory, width, seed, fraction, scale):
    model = [f"model.width={width}", f"model.init.seed={seed}", f"model.init.scale={scale}"]
    net = build(gd_config(*model)).module.model
    init = theory.state(net.a.detach().numpy(), net.b.detach().numpy(), 1.0)
    eta = fraction * float(theory.theorem1_max_lr(init["residual"], init["norm"], 1.0))
    log_dir = tmp_path_factory.mktemp("gd")
    monitor = TheoryMonitor()
    summary = run(gd_config(*model, f"optim.lr={eta}"), log_dir, extra_callbacks=[monitor])
    tags = events.read_metrics(log_dir)
    steps, eps = tags["dynamics/residual"]
    lam, qn, ratio = (tags[f"dynamics/{k}"][1] for k in ("norm", "imbalance_norm", "imbalance_ratio"))
    np.testing.assert_array_equal(tags["theory/imbalance_factor"][0], steps)
    size = 1 + lam.max()
    # P so far = Q_k(t) / Q_k(0), and the GF-solution sharpness is sqrt(4 phi^2 + Qn_t^2), at every step
    np.testing.assert_allclose(tags["theory/imbalance_factor"][1], ratio, rtol=0, atol=1e-11 * size)
    np.testing.assert_allclose(tags["theory/gf_solution_sharpness"][1], np.sqrt(4 + qn * qn), rtol=1e-14)
    # one-step predictions from the previous logged state equal what GD did, to round-off
    expected = theory.gd_step(eps[:-1], lam[:-1], 0.0, eta, 1.0)
    np.testing.assert_allclose(tags["theory/pred_residual"][1], expected[0], rtol=0, atol=1e-13 * size ** 2)
    np.testing.assert_allclose(tags["theory/pred_norm"][1], expected[1], rtol=0, atol=1e-13 * size ** 2)
    for name in ("residual", "norm", "imbalance"):
        assert tags[f"theory/pred_error_{name}"][1].max() <= 1e-13 * size ** 2
    assert summary["status"] == CONVERGED
    assert monitor.factor == pytest.approx(ratio[-1], abs=1e-11 * size)


def test_theory_monitor_survives_divergence(tmp_path):
    cfg = gd_config("model.width=3", "model.init.scale=3.0", "optim.lr=1.5")
    monitor = TheoryMonitor()
    summary = run(cfg, tmp_path, extra_callbacks=[monitor])
    assert summary["status"] == DIVERGED
    assert "theory/pred_error_residual" in events.read_metrics(tmp_path)


def test_theory_monitor_refuses_processes_without_gd_steps(tmp_path, cli):
    with pytest.raises(ValueError, match="predicts GD steps"):
        run(gd_config("optim.method=flow", "train.max_time=10"), tmp_path / "a", extra_callbacks=[TheoryMonitor()])
    code, _, err, dirs = cli("train", "optim.method=momentum", "monitor.theory.every_n_steps=1")
    assert code == 2 and "'monitor.theory.every_n_steps'" in err and "momentum" in err and dirs == []
    code, _, err, dirs = cli("train", "model.kind=mlp", "monitor.theory.every_n_steps=1")
    assert code == 2 and "shallow net" in err and dirs == []

