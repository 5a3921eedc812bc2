"""Runs that never lie about their state (issue 18, items 6, 7, 9, 10 and a real full file system): real
`shallownet` processes, real signals, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
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


# --- item 6: the owner of a run folder, and `shallownet status` -----------------------------------------

LONG = ["train.max_steps=1000000", "optim.lr=0.01", "train.checkpoint_every_n_steps=10", *QUIET]


def wait_until(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def states(root: Path) -> dict[str, str]:
    """`shallownet status root` as {run folder relative to root: its line}."""
    result = ok(shallownet("status", str(root)))
    head, *lines = result.stdout.strip().splitlines()
    assert head == f"{len(lines)} run folder{'s' * (len(lines) != 1)} under {root.resolve()}", head
    return {line.split()[1]: line for line in lines}


def test_status_tells_a_running_run_from_a_crashed_one(tmp_path):
    ok(shallownet("train", f"output.root={tmp_path}", *QUIET, "train.max_steps=5"))
    proc = subprocess.Popen([EXE, "train", f"output.root={tmp_path}", *LONG], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        run = wait_until(lambda: next(tmp_path.glob("train/version_1/last.ckpt"), None), "a checkpoint").parent
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "starting" and summary["owner"]["pid"] == proc.pid
        assert summary["owner"]["host"] == socket.gethostname() and summary["owner"]["started"] <= time.time()
        seen = states(tmp_path)
        assert seen["train/version_0"].split()[0] == "max_steps" and "(5 steps)" in seen["train/version_0"]
        assert seen["train/version_1"].split()[0] == "running", seen
        assert f"pid {proc.pid} on host {socket.gethostname()}" in seen["train/version_1"]
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean up at all: summary.json keeps saying `starting`
        proc.wait(timeout=60)
    assert json.loads((run / "summary.json").read_text())["status"] == "starting"
    line = states(tmp_path)["train/version_1"]
    assert line.split()[0] == "crashed" and f"pid {proc.pid} on host {socket.gethostname()}" in line, line
    resume = subprocess.Popen([EXE, "train", f"train.resume={run}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV)  # a crashed run can be resumed; while it runs it is running
    try:
        wait_until(lambda: f"pid {resume.pid}" in states(tmp_path)["train/version_1"], "the resume seen running")
        assert states(tmp_path)["train/version_1"].split()[0] == "running"
    finally:
        resume.send_signal(signal.SIGINT)
        _, err = resume.communicate(timeout=120)
    assert resume.returncode == 130, err[-2000:]
    assert states(tmp_path)["train/version_1"].split()[0] == "interrupted"


def test_status_refuses_what_is_no_root(tmp_path):
    assert "missing" in refused(shallownet("status", str(tmp_path / "nowhere")))
    (tmp_path / "file").write_text("x")
    assert "a file" in refused(shallownet("status", str(tmp_path / "file")))
    assert "one ROOT" in refused(shallownet("status", str(tmp_path), str(tmp_path)))
    assert states(tmp_path) == {}


# --- items 7 and 9: symlinks and unwritable places -------------------------------------------------------

def test_a_symlinked_runs_name_writes_into_the_real_folder_and_prints_it(tmp_path):
    real = tmp_path / "disk" / "train"
    real.mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "train").symlink_to(real, target_is_directory=True)
    result = ok(shallownet("train", "train.max_steps=3", f"output.root={tmp_path / 'runs'}", *QUIET))
    assert (real / "version_0" / "summary.json").is_file()
    assert f"run folder: {real / 'version_0'}" in result.stdout


def test_a_resume_refuses_a_symlink_inside_its_run_folder_and_changes_nothing(tmp_path):
    ok(shallownet("train", "train.max_steps=3", f"output.root={tmp_path}", *QUIET))
    run_dir = tmp_path / "train" / "version_0"
    elsewhere = tmp_path / "precious.csv"
    elsewhere.write_text("not a run's metrics\n")
    (run_dir / "metrics.csv").unlink()
    (run_dir / "metrics.csv").symlink_to(elsewhere)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()}
    line = refused(shallownet("train", f"train.resume={run_dir}", "train.max_steps=6"))
    assert "metrics.csv is a symlink" in line
    assert elsewhere.read_text() == "not a run's metrics\n"
    assert {p: p.read_bytes() for p in before} == before


def test_a_read_only_file_system_is_refused_before_any_work(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs privileges this machine does not give")
    try:
        started = time.monotonic()
        line = refused(shallownet("train", f"output.root={mount}", *QUIET))
        assert "read-only file system" in line and "output.root" in line
        assert time.monotonic() - started < 30 and not any(mount.iterdir())
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- item 5: a real full file system ---------------------------------------------------------------------

def test_a_full_disk_ends_in_one_line_that_tells_the_truth_about_the_run_folder(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs privileges this machine does not give")
    try:
        result = shallownet("train", f"output.root={mount}", "train.max_steps=50", *QUIET)
        assert result.returncode == 1, result.stderr[-3000:]
        (line,) = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr and "(errno ENOSPC)" in line
        run_dir = mount / "train" / "version_0"
        assert not list(run_dir.glob("*.partial")) and not list(run_dir.glob("*.tmp"))
        summary = json.loads((run_dir / "summary.json").read_text())  # whole: never half-written
        if summary["status"] != "failed":  # no room left to say so: the line says that, and status tells
            assert f"{run_dir / 'summary.json'} could not be updated" in line
            assert "crashed" in ok(shallownet("status", str(mount))).stdout
        else:
            assert "says failed" in line and "ENOSPC" in summary["reason"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_an_output_root_with_a_name_too_long_for_the_file_system_is_refused(tmp_path):
    line = refused(shallownet("train", f"output.root={tmp_path / ('x' * 300) / 'runs'}", *QUIET))
    assert "output.root" in line and "300 bytes long" in line
    assert list(tmp_path.iterdir()) == []
