"""Runs that never lie about their state (issue 18, items 6, 7, 9, 10 and a real full file system): real
`shallownet` processes, real signals, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from shallownet import events

EXE = Path(sys.executable).with_name("shallownet")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUIET = ["train.tol=1e-300", "output.progress=false"]


def shallownet(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=ENV, timeout=300, **kwargs)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def refused(result: subprocess.CompletedProcess) -> str:
    """The one-line refusal of a command that must exit 2 with no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_time_s", "provenance")}


# --- item 10: a resume from a final state off the monitoring cadence ------------------------------------

def test_a_run_resumed_from_off_its_cadence_logs_what_an_uninterrupted_run_logs(tmp_path):
    """7 steps, then resumed to 12, against 12 at once; cadences 5 (sharpness) and 3 (dynamics) do not
    divide 7, so the 7-step run measured its final state off both cadences."""
    config = [*QUIET, "monitor.sharpness.every_n_steps=5", "monitor.dynamics.every_n_steps=3"]
    ok(shallownet("train", f"output.root={tmp_path / 'whole'}", *config, "train.max_steps=12"))
    ok(shallownet("train", f"output.root={tmp_path / 'split'}", *config, "train.max_steps=7"))
    whole, split = (tmp_path / name / "train" / "version_0" for name in ("whole", "split"))
    assert 7 in events.read_metrics(split)["curvature/sharpness"][0]  # the 7-step run logged its final state
    ok(shallownet("train", f"train.resume={split}", "train.max_steps=12"))

    expected, got = (json.loads((d / "summary.json").read_text()) for d in (whole, split))
    assert comparable(got) == comparable(expected)
    final = [torch.load(d / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"] for d in (whole, split)]
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    for read in (events.read_metrics, events.read_scalars):  # metrics.csv (float64) and TensorBoard
        want, have = read(whole), read(split)
        assert want.keys() == have.keys()
        for tag in want:
            np.testing.assert_array_equal(have[tag][0], want[tag][0], err_msg=tag)  # the same steps
            np.testing.assert_array_equal(have[tag][1], want[tag][1], err_msg=tag)  # bit for bit
