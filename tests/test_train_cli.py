"""`shallownet train` end to end: run folders, TensorBoard events read back, summary, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shallownet import events, theory
from tests.conftest import CONFIGS, read_summary

DYNAMICS = ["dynamics/loss", "dynamics/residual", "dynamics/norm", "dynamics/imbalance",
            "dynamics/imbalance_norm", "dynamics/imbalance_ratio"]
ETA = 0.05  # small enough that 40 steps do not reach eps = 0 exactly
CURVATURE = ["curvature/sharpness", "curvature/stability_threshold", "curvature/sharpness_x_lr",
             "curvature/hvp_count"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One 40-step run, dynamics every step, sharpness every 5 steps."""
    from shallownet.cli import main

    root = tmp_path_factory.mktemp("runs")
    code = main(["train", str(CONFIGS / "train.yaml"), f"output.root={root}", "train.max_steps=40",
                 "train.tol=1e-300", f"optim.lr={ETA}", "monitor.sharpness.every_n_steps=5"])
    (run_dir,) = [p.parent for p in root.rglob("config.yaml")]
    return code, run_dir, events.read_metrics(run_dir), events.load(run_dir)


def test_run_folder_layout(short_run):
    code, run_dir, _, _ = short_run
    assert code == 0
    assert run_dir.name == "version_0" and run_dir.parent.name == "train"
    for name in ("config.yaml", "summary.json", "last.ckpt", "metrics.csv"):
        assert (run_dir / name).is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not (run_dir / "hparams.yaml").exists()  # the config is config.yaml


def test_every_contract_tag_has_the_right_points(short_run):
    _, run_dir, scalars, acc = short_run
    in_tensorboard = events.read_scalars(run_dir)
    for tag in DYNAMICS + CURVATURE:  # float32 events for TensorBoard, float64 in metrics.csv
        np.testing.assert_array_equal(in_tensorboard[tag][0], scalars[tag][0])
        np.testing.assert_allclose(in_tensorboard[tag][1], scalars[tag][1], rtol=1e-7, atol=1e-37)
    for tag in DYNAMICS:
        steps, _ = scalars[tag]
        assert steps.tolist() == list(range(41)), tag
    for tag in CURVATURE:
        steps, _ = scalars[tag]
        assert steps.tolist() == list(range(0, 41, 5)), tag
    histograms = acc.Histograms("dynamics/imbalance_per_unit")
    assert [h.step for h in histograms] == list(range(41))
    assert histograms[0].histogram_value.num == 10  # one Q_i per hidden unit


def test_logged_dynamics_follow_the_recursions(short_run):
    _, run_dir, scalars, _ = short_run
    eta, phi = ETA, 1.0
    eps = scalars["dynamics/residual"][1]
    lam = scalars["dynamics/norm"][1]
    q = scalars["dynamics/imbalance"][1]
    pred_eps, pred_lam, pred_q = theory.gd_step(eps[:-1], lam[:-1], q[:-1], eta, phi)
    np.testing.assert_allclose(eps[1:], pred_eps, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lam[1:], pred_lam, rtol=1e-12)
    np.testing.assert_allclose(q[1:], pred_q, rtol=1e-12)
    ratio = scalars["dynamics/imbalance_ratio"][1]
    np.testing.assert_allclose(ratio, q / q[0], rtol=1e-10)
    np.testing.assert_allclose(scalars["dynamics/loss"][1], 0.5 * eps**2, rtol=1e-12, atol=1e-300)
    qn = scalars["dynamics/imbalance_norm"][1]
    np.testing.assert_allclose(qn, theory.imbalance_norm_from(eps, lam, phi), rtol=1e-9)


def test_logged_sharpness_matches_the_closed_form(short_run):
    _, _, scalars, _ = short_run
    steps, sharp = scalars["curvature/sharpness"]
    eps, lam = scalars["dynamics/residual"][1][steps], scalars["dynamics/norm"][1][steps]
    np.testing.assert_allclose(sharp, theory.sharpness(eps, lam, 1.0), rtol=1e-9)
    np.testing.assert_allclose(scalars["curvature/stability_threshold"][1], 2 / ETA, rtol=1e-15)
    np.testing.assert_allclose(scalars["curvature/sharpness_x_lr"][1], ETA * sharp, rtol=1e-15)
    assert (scalars["curvature/hvp_count"][1] >= 1).all()


def test_summary_agrees_with_the_last_logged_values(short_run):
    _, run_dir, scalars, _ = short_run
    summary = read_summary(run_dir)
    assert summary["status"] == "max_steps" and summary["steps"] == 40
    assert (summary["eta"], summary["phi"], summary["width"], summary["seed"]) == (ETA, 1.0, 10, 0)
    assert summary["wall_time_s"] > 0
    for key in ("loss", "residual", "norm", "imbalance", "imbalance_norm"):
        assert summary["final"][key] == scalars[f"dynamics/{key}"][1][-1], key
        assert summary["init"][key] == scalars[f"dynamics/{key}"][1][0], key
    assert summary["final"]["sharpness"] == scalars["curvature/sharpness"][1][-1]


def test_hparams_tab_has_real_metrics(short_run):
    _, run_dir, scalars, acc = short_run
    summary = read_summary(run_dir)
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins
    assert b"optim.lr" in plugins["_hparams_/session_start_info"]
    assert b"outcome" in plugins["_hparams_/session_start_info"]
    assert b"max_steps" in plugins["_hparams_/session_start_info"]
    in_tensorboard = events.read_scalars(run_dir)
    assert in_tensorboard["hparams/final_loss"][1][-1] == pytest.approx(summary["final"]["loss"], rel=1e-6, abs=1e-30)
    assert in_tensorboard["hparams/final_sharpness"][1][-1] == pytest.approx(summary["final"]["sharpness"], rel=1e-6)
    assert in_tensorboard["hparams/converged"][1][-1] == 0.0


def test_sharpness_layout_is_registered(short_run):
    _, _, _, acc = short_run
    assert "custom_scalars__config__" in acc.Tags()["tensors"]


def test_second_run_gets_a_new_folder_and_leaves_the_first_alone(cli):
    args = ("train.max_steps=5", "monitor.sharpness.every_n_steps=0")
    code, _, _, (first,) = cli("train", *args, config=CONFIGS / "train.yaml")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    code2, out, _, dirs = cli("train", *args, config=CONFIGS / "train.yaml")
    assert code == code2 == 0
    assert [d.name for d in dirs] == ["version_0", "version_1"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert "version_1" in out and "tensorboard --logdir" in out


def test_diverging_run_is_an_outcome_not_a_crash(cli):
    code, out, _, (run_dir,) = cli("train", "optim.lr=3", "model.init.scale=2", "model.width=1",
                                   "train.max_steps=500", config=CONFIGS / "train.yaml")
    assert code == 0
    assert "DIVERGED" in out
    summary = read_summary(run_dir)
    assert summary["status"] == "diverged" and summary["steps"] < 500
    steps, norms = events.read_metrics(run_dir)["dynamics/norm"]
    assert steps[-1] == summary["steps"]
    assert not np.isfinite(norms[-1]) or norms[-1] > 1e12


BAD_INPUTS = [
    (("optim.lrr=0.1",), "optim.lrr"),
    (("optim.lr=fast",), "optim.lr"),
    (("optim.lr=0",), "optim.lr"),
    (("optim.lr=-0.1",), "optim.lr"),
    (("model.width=0",), "model.width"),
    (("model.width=2.5",), "model.width"),
    (("optim.lr=nan",), "optim.lr"),
    (("model.init.scale=inf",), "model.init.scale"),
    (("model.init.scheme=uniform",), "model.init.scheme"),
    (("train.tol=0",), "train.tol"),
    (("model.init.scheme=explicit", "model.width=2", "model.init.a0=[1,2]"), "model.init.b0"),
    (("train.device=cuda",), "train.device"),
    (("train.device=cuda:99",), "train.device"),
    (("output.name=a/b",), "output.name"),
    (("lr",), "key=value"),
]


@pytest.mark.parametrize("overrides, named", BAD_INPUTS)
def test_bad_overrides_exit_2_with_one_line_and_no_folder(cli, overrides, named):
    code, out, err, dirs = cli("train", *overrides, config=CONFIGS / "train.yaml")
    if overrides == ("train.device=cuda",) and __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is available, so train.device=cuda is valid")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named in err
    assert dirs == [] and out == ""


@pytest.mark.parametrize("content", [None, "dir", b"\xff\xfe\x00bad", "model: [unclosed", "- a\n- list\n"])
def test_bad_config_files_exit_2(cli, tmp_path, content):
    path = tmp_path / "cfg.yaml"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, _, err, dirs = cli("train", config=path)
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1
    assert dirs == []


def test_console_script_reports_bad_input_with_exit_2(tmp_path):
    exe = Path(sys.executable).with_name("shallownet")  # the console script beside this interpreter
    assert exe.is_file(), "the console script `shallownet` is not installed"
    proc = subprocess.run([exe, "train", "nope.key=1", f"output.root={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("shallownet train: error: unknown config key 'nope'; allowed: "
                                   "model, data, loss, optim, train, trainer, monitor, output")
    assert list(tmp_path.iterdir()) == []
