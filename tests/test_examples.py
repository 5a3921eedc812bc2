"""Every script in examples/ runs, as a user would run it (a new process), with small settings, and does
what its docstring says."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO

EXAMPLES = REPO / "examples"
PLUGIN_ENV = {"SHALLOWNET_PLUGINS": "tiny_plugin.kinds", "PYTHONPATH": str(EXAMPLES / "plugin_model")}


def run(*args, env=None):
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def only(folder, pattern):
    (path,) = folder.glob(pattern)
    return path


def test_own_lightning_module(tmp_path):
    out = run(EXAMPLES / "own_lightning_module.py", tmp_path, 20)
    with only(tmp_path, "csv/version_0/metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    sharpness = {int(r["step"]): float(r["curvature/sharpness"]) for r in rows if r.get("curvature/sharpness")}
    assert sorted(sharpness) == [0, 5, 10, 15, 20]
    assert any(r.get("dynamics/weight_norm") for r in rows)
    threshold = {float(r["curvature/stability_threshold"]) for r in rows if r.get("curvature/stability_threshold")}
    assert threshold == {4.0}  # 2 / lr for SGD at lr = 0.5
    from shallownet import events

    tags = events.load(only(tmp_path, "tensorboard/version_0")).Tags()
    assert "curvature/sharpness" in tags["scalars"] and "dynamics/first_layer_row_norms" in tags["histograms"]
    # the checkpoint kept is the flattest of the checked states (ModelCheckpoint saves at steps 5, 10, ...)
    best = only(tmp_path, "checkpoints/*.ckpt")
    best_step = min((s for s in sharpness if s > 0), key=sharpness.get)
    assert best.name == f"flattest-step={best_step}.ckpt"
    assert f"S = {sharpness[best_step]:.4g}" in out
    assert torch.load(best, weights_only=False)["global_step"] == best_step


def test_replot_sweep(tmp_path):
    run("-m", "shallownet", "sweep", f"output.root={tmp_path}", "grid.lr.num=6", "grid.scale.num=5",
        "train.max_steps=2000", "output.progress=false", "output.tensorboard=false")
    folder = only(tmp_path, "figure3/version_0")
    out = run(EXAMPLES / "replot_sweep.py", folder, tmp_path / "replot.png")
    grid = np.load(folder / "grid.npz")
    converged = np.count_nonzero(grid["outcome"] == list(grid["outcome_names"]).index("converged"))
    assert f"converged  {converged:6d} of 30 runs" in out
    ratio = grid["norm_gd_over_gf"][np.isfinite(grid["norm_gd_over_gf"])]
    assert f"min {ratio.min():.4g}" in out and ratio.max() <= 1 + 1e-9
    assert (tmp_path / "replot.png").stat().st_size > 10_000


def test_read_compare(tmp_path):
    run("-m", "shallownet", "compare", f"output.root={tmp_path}", "train.max_steps=40", "output.progress=false")
    folder = only(tmp_path, "compare/version_0")
    out = run(EXAMPLES / "read_compare.py", folder, tmp_path / "compare.png")
    summary = json.loads((folder / "summary.json").read_text())
    for row in summary["rows"]:
        assert f"{row['run']:12s} {row['outcome']:10s} lam(T) = {row['final_norm']:.8g}" in out
    assert f"lam_GF = {summary['theory']['norm_gf']:.8g}" in out
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_read_stabilization(tmp_path):
    run("-m", "shallownet", "train", f"output.root={tmp_path}", "train.max_steps=20", "train.tol=1e-300",
        "model.width=3", "optim.lr=0.3", "monitor.sharpness.every_n_steps=0", "monitor.stabilization.every_n_steps=1",
        "output.progress=false")
    folder = only(tmp_path, "train/version_0")
    out = run(EXAMPLES / "read_stabilization.py", folder, 10, tmp_path / "stabilization.png")
    with (folder / "metrics.csv").open(newline="") as file:
        xs = {int(r["step"]): float(r["stabilization/x"]) for r in csv.DictReader(file) if r.get("stabilization/x")}
    assert sorted(xs) == list(range(21))
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["0-9", "10-19", "20-29"]
    rms = np.sqrt(np.mean([xs[s] ** 2 for s in range(10)]))
    assert float(lines[1].split()[2]) == pytest.approx(rms, rel=1e-3)  # printed with 4 digits
    assert (tmp_path / "stabilization.png").stat().st_size > 10_000


def test_plugin_model(tmp_path):
    shallownet = ["-m", "shallownet", "train"]
    run(*shallownet, "model.kind=diagonal", "model.phi=0.5", "optim.lr=0.05", "train.max_steps=500",
        f"output.root={tmp_path}", "output.progress=false", env=PLUGIN_ENV)
    folder = only(tmp_path, "train/version_0")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "converged"
    with (folder / "metrics.csv").open(newline="") as file:
        slopes = [float(r["dynamics/slope"]) for r in csv.DictReader(file) if r.get("dynamics/slope")]
    assert slopes[-1] == pytest.approx(0.5, abs=1e-4)  # the plugin's quantities(), logged by the DynamicsMonitor
    help_text = run(*shallownet, "--help", "model.kind=diagonal", env=PLUGIN_ENV)
    assert "model.scale=0.5" in help_text and "every u_i and v_i starts at scale" in help_text
    refused = subprocess.run([sys.executable, "-X", "importtime", *shallownet, "model.kind=diagonal", "model.scale=-1"],
                             capture_output=True, text=True, cwd=REPO, env={**os.environ, **PLUGIN_ENV}, timeout=120)
    assert refused.returncode == 2 and "config key 'model.scale' must be > 0" in refused.stderr
    assert "| torch\n" not in refused.stderr  # refused by the light registration module, before torch


def test_sgd_study(tmp_path):
    out = run(EXAMPLES / "sgd_study.py", tmp_path, "--steps", 40, "--every", 20, "--n-train", 200, "--n-batches", 5)
    study = json.loads((tmp_path / "study.json").read_text())
    assert (tmp_path / "sgd_batch_sharpness_digits.png").stat().st_size > 10_000
    (gd,) = [r for r in study["edge"] if r["batch"] is None]
    # full batch: the one "batch" is all rows, so batch sharpness, the step's and the GNI are g^T H g / |g|^2
    assert gd["batch_sharpness"] == pytest.approx(gd["step_sharpness"], rel=1e-10)
    assert gd["batch_sharpness"] == pytest.approx(gd["gni"], rel=1e-10)
    assert max(gd["batch_sharpness_stderr"]) < 1e-12 * max(gd["batch_sharpness"])  # two orders of the same rows
    assert [r["measured_steps"] for r in study["edge"][:5]] == [[0, 20, 40]] * 5
    # each step of SGD or GD multiplies a_j^2 - b_j^2 by 1 - eta^2 s_j^2, s_j = dL_B/dw_j: in (0, 1] for small eta
    for row in study["balance"]["diagonal_linear"]:
        assert all(0 < r <= 1 for r in row["per_coordinate_ratio"]), row
    assert f"{'SGD b = 8':36s}  0.50   4.00     40" in out


@pytest.mark.slow
def test_architectures_eos(tmp_path):
    """The ResNet / Transformer study at 20 steps (about 80 s): its figures, the balance identity exactly where
    the docs say it applies, and the spectrum taken at the state the monitor measured."""
    out = run(EXAMPLES / "architectures_eos.py", "--root", tmp_path / "runs", "--figures", tmp_path, "--steps", 20,
              "--vectors", 2, "--lanczos", 10)
    for name in ("arch_eos_resnet_transformer.png", "arch_spectrum.png", "arch_balance_resnet.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    balance = [line.split() for line in out.splitlines() if line.startswith("balance gd_lr=")]
    assert len(balance) == 4 * 6  # 4 step sizes x the 6 hidden layers of a 2-stage, 1-block ResNet
    for line in balance:
        layer, applies = line[2].rstrip(":"), line[4].rstrip(",")
        # theory.md 8.4: a block's first conv feeds a conv through ReLU; every other layer feeds a skip sum
        assert applies == ("1" if layer.endswith(".conv1") else "0"), line
        if applies == "1":
            assert float(line[-1]) < 1e-13, line
    spectra = [line for line in out.splitlines() if " spectrum at " in line]
    assert len(spectra) == 4  # start and edge of each net
    for line in spectra:
        high = float(line.split("Ritz values in [")[1].split("]")[0].split(", ")[1])
        monitor = float(line.split("monitor's S at step ")[1].split(" = ")[1].split(",")[0])
        assert high == pytest.approx(monitor, rel=1e-2), line  # the top Ritz value is the sharpness, same state
    assert "spectrum at step 20:" in out and "monitor's S at step 20 =" in out
