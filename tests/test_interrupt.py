"""Runs that survive interruption: real `shallownet train` processes, real signals, and a resume that gives
the uninterrupted run's parameters, summary and logged values bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shallownet import events

EXE = Path(sys.executable).with_name("shallownet")
LONG = ["train.max_steps=1000000", "train.tol=1e-300", "optim.lr=0.01", "monitor.sharpness.every_n_steps=50"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(root: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, "train", f"output.root={root}", *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(path_glob, root: Path, timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {path_glob} under {root} within {timeout} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_cleanly_with_a_status_and_a_checkpoint(tmp_path, sig, code):
    proc = start(tmp_path, *LONG)
    ckpt_free = wait_for("train/version_0/metrics.csv", tmp_path)  # training has logged
    run_dir = ckpt_free.parent
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 1000000
    assert "resume with" in out
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["steps"]
    logged = events.read_metrics(run_dir)["dynamics/residual"][0]
    assert logged[-1] == summary["steps"] and len(set(logged)) == len(logged)  # flushed, each step once


def test_ctrl_c_during_start_up_leaves_nothing(tmp_path):
    proc = start(tmp_path, *LONG)
    time.sleep(0.3)  # still importing: no run folder exists yet
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "Traceback" not in err
    assert not tmp_path.joinpath("train").exists() or not any(tmp_path.joinpath("train").iterdir())


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_time_s", "provenance")}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result_bit_for_bit(tmp_path):
    config = ["train.max_steps=400", "train.tol=1e-300", "optim.lr=0.02", "monitor.sharpness.every_n_steps=7",
              "monitor.dynamics.every_n_steps=3", "train.checkpoint_every_n_steps=1", "output.progress=false"]
    whole = subprocess.run([EXE, "train", f"output.root={tmp_path / 'whole'}", *config], capture_output=True,
                           text=True, env=ENV)
    assert whole.returncode == 0, whole.stderr[-2000:]
    (reference,) = (tmp_path / "whole").rglob("summary.json")

    root = tmp_path / "killed"
    proc = start(root, *config)
    run_dir = wait_for("train/version_0/last.ckpt", root).parent
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < 400, "the kill came too late to test a resume"
    resumed = subprocess.run([EXE, "train", f"train.resume={run_dir}"], capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    expected, got = (json.loads(p.read_text()) for p in (reference, run_dir / "summary.json"))
    assert comparable(got) == comparable(expected)
    final = [torch.load(d / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
             for d in (reference.parent, run_dir)]
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    exact = [events.read_metrics(d) for d in (reference.parent, run_dir)]
    assert exact[0].keys() == exact[1].keys()
    for tag in exact[0]:
        np.testing.assert_array_equal(exact[1][tag][0], exact[0][tag][0], err_msg=tag)  # each step once
        np.testing.assert_array_equal(exact[1][tag][1], exact[0][tag][1], err_msg=tag)  # bit for bit
    in_tensorboard = [events.read_scalars(d) for d in (reference.parent, run_dir)]
    for tag in ("dynamics/residual", "curvature/sharpness"):
        np.testing.assert_array_equal(in_tensorboard[1][tag][0], in_tensorboard[0][tag][0], err_msg=tag)
        np.testing.assert_array_equal(in_tensorboard[1][tag][1], in_tensorboard[0][tag][1], err_msg=tag)
