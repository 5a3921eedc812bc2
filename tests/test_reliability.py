"""Runs that never lie about their state (issue 18): real `shallownet` processes, real signals, real files.

A refused resume leaves its folder byte for byte as it was; every refusal is one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shallownet import events

EXE = Path(sys.executable).with_name("shallownet")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LONG = ["train.max_steps=1000000", "train.tol=1e-300", "optim.lr=0.01", "output.progress=false",
        "train.checkpoint_every_n_steps=10"]
SHORT = ["train.max_steps=20", "train.tol=1e-300", "output.progress=false", "monitor.sharpness.every_n_steps=5"]


def shallownet(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=ENV, timeout=300, **kwargs)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_until(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def claimed_by(run: Path, pid: int) -> bool:
    """The run's lock file names pid (the holder has started writing)."""
    try:
        return json.loads((run / ".lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def hashes(folder: Path) -> dict[str, str]:
    """Every file under folder (names included) by content hash: what 'unchanged' means here."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result: subprocess.CompletedProcess) -> str:
    """The one-line refusal of a command that must exit 2 with no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 20-step run that ended max_steps (tol unreachable), with its checkpoint and logs."""
    root = tmp_path_factory.mktemp("base")
    result = shallownet("train", f"output.root={root}", *SHORT)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "train" / "version_0"


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / "train" / "version_0"
    shutil.copytree(run_dir, target)
    return target


def _edit_width(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    assert "width: 10" in text
    (run / "config.yaml").write_text(text.replace("width: 10", "width: 12"))


def _edit_lr(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    assert "lr: 0.1" in text
    (run / "config.yaml").write_text(text.replace("lr: 0.1", "lr: 0.2"))


def _truncate(name: str, keep: float):
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return damage


def _overwrite(name: str, content: bytes):
    return lambda run: (run / name).write_bytes(content)


DAMAGES = {  # what was done to the folder -> a word the refusal must contain
    "config width edited": (_edit_width, "width"),
    "config lr edited": (_edit_lr, "optim.lr"),
    "checkpoint truncated": (_truncate("last.ckpt", 0.5), "last.ckpt"),
    "checkpoint empty": (_overwrite("last.ckpt", b""), "last.ckpt"),
    "checkpoint garbage": (_overwrite("last.ckpt", os.urandom(4096)), "last.ckpt"),
    "summary truncated": (_truncate("summary.json", 0.5), "summary.json"),
    "summary a list": (_overwrite("summary.json", b"[1, 2]\n"), "summary.json"),
    "summary empty": (_overwrite("summary.json", b""), "summary.json"),
    "metrics garbage": (_overwrite("metrics.csv", b"step,x\nnot-a-number,1\n"), "metrics.csv"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_refused_resume_leaves_the_folder_byte_for_byte(finished_run, tmp_path, damage):
    run = copy_of(finished_run, tmp_path)
    edit, word = DAMAGES[damage]
    edit(run)
    before = hashes(run.parent.parent)
    line = refused(shallownet("train", f"train.resume={run}", "train.max_steps=40"))
    assert word in line and "train.resume" in line, line
    assert hashes(run.parent.parent) == before


def test_resuming_a_finished_run_says_so_or_continues_with_a_larger_budget(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    before = hashes(run)
    line = refused(shallownet("train", f"train.resume={run}"))
    assert "has taken its 20 steps" in line and "train.max_steps=" in line, line
    assert hashes(run) == before
    # README: train.max_steps may change; the continued run equals one that ran 40 steps from the start
    assert shallownet("train", f"train.resume={run}", "train.max_steps=40").returncode == 0
    whole = shallownet("train", f"output.root={tmp_path / 'whole'}", *SHORT, "train.max_steps=40")
    assert whole.returncode == 0, whole.stderr[-2000:]
    (reference,) = (tmp_path / "whole").rglob("last.ckpt")
    got, expected = (torch.load(p, map_location="cpu", weights_only=True) for p in (run / "last.ckpt", reference))
    assert got["global_step"] == expected["global_step"] == 40
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "max_steps" and summary["steps"] == 40


def test_a_run_folder_has_one_writer_and_its_lock_dies_with_it(tmp_path):
    first = start("train", f"output.root={tmp_path}", *LONG)
    run = wait_until(lambda: next(tmp_path.glob("train/version_0/last.ckpt"), None), "a checkpoint").parent
    wait_until(lambda: claimed_by(run, first.pid), "the run naming itself in its lock")
    line = refused(shallownet("train", f"train.resume={run}"))
    assert f"in use by pid {first.pid} on host {socket.gethostname()}" in line and "train.resume" in line, line
    first.send_signal(signal.SIGKILL)  # no clean up at all: the kernel drops the lock
    first.wait(timeout=60)
    second = start("train", f"train.resume={run}")
    wait_until(lambda: claimed_by(run, second.pid), "the resume naming itself in the lock")
    line = refused(shallownet("train", f"train.resume={run}"))
    assert f"in use by pid {second.pid}" in line, line
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def interrupt_when(proc: subprocess.Popen, ready, sig: int, settle: float = 0.0) -> str:
    """Send sig once ready() holds (and settle seconds more); the process's stderr, after it ends."""
    wait_until(ready, "the command getting under way")
    time.sleep(settle)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + sig and "Traceback" not in err, (proc.returncode, err[-3000:])
    return err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_eos_ends_an_interruption_as_train_does(tmp_path, sig):
    proc = start("eos", f"output.root={tmp_path}", "train.max_steps=100000", "output.progress=false")
    first = tmp_path / "eos" / "version_0" / "gd_lr=0.3"
    interrupt_when(proc, lambda: any(first.glob("events.out.tfevents.*")), sig, settle=4.0)
    summary = json.loads((first.parent / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rows"][0]["outcome"] == "interrupted"
    assert 0 < summary["rows"][0]["steps"] < 100000
    state = torch.load(first / "last.ckpt", map_location="cpu", weights_only=True)  # resumable
    assert state["global_step"] == summary["rows"][0]["steps"]
    assert (first.parent / "eos.png").stat().st_size > 0


def test_eos_interrupted_after_only_the_first_sharpness_still_ends_truthfully(tmp_path):
    # the sharpness measured at t = 0 and never again: eos.png's legend has no ratio after the start to quote
    proc = start("eos", f"output.root={tmp_path}", "train.max_steps=100000", "output.progress=false",
                 "monitor.sharpness.every_n_steps=100000")
    first = tmp_path / "eos" / "version_0" / "gd_lr=0.3"
    interrupt_when(proc, lambda: any(first.glob("events.out.tfevents.*")), signal.SIGTERM, settle=4.0)
    summary = json.loads((first.parent / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rows"][0]["outcome"] == "interrupted"
    assert (first.parent / "eos.png").stat().st_size > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sweep_keeps_its_finished_chunks(tmp_path, sig):
    import numpy as np

    proc = start("sweep", f"output.root={tmp_path}", "output.progress=false", "engine.backend=torch",
                 "engine.chunk_size=500", "train.tol=1e-300", "grid.lr.num=100", "grid.scale.num=100")
    run = tmp_path / "figure3" / "version_0"
    interrupt_when(proc, lambda: (run / "summary.json").exists(), sig, settle=4.0)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["runs"] == 10000
    done = summary["finished_runs"]
    assert 0 < done < 10000 and done % 500 == 0, done
    grid = np.load(run / "grid.npz")
    outcome, steps = grid["outcome"].ravel(), grid["steps"].ravel()  # row-major: the first chunks finished
    names = list(grid["outcome_names"])
    assert (outcome[done:] == names.index("interrupted")).all() and (steps[done:] == -1).all()
    assert (outcome[:done] == names.index("max_steps")).all() and (steps[:done] == 20000).all()
    assert not list(run.glob("*.partial")) and not list(run.glob("*.png"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_figure1_ends_an_interruption_with_what_it_drew(tmp_path, sig):
    proc = start("figure1", f"output.root={tmp_path}", "train.max_steps=1000000", "train.tol=1e-300",
                 "processes=[{method: gd, lr: 0.001}]")
    run = tmp_path / "figure1" / "version_0"
    interrupt_when(proc, lambda: run.is_dir(), sig, settle=1.0)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert {p["outcome"] for p in summary["paths"]} == {"interrupted"}
    assert (run / "figure1.png").stat().st_size > 0


def test_a_sigterm_during_lightnings_set_up_still_ends_interrupted(tmp_path):
    """Lightning's own SIGTERM handler is in place while fit() sets up; a signal then used to end the run
    with SystemExit(0) and no summary. A real SIGTERM to this very process, sent from on_fit_start."""
    import lightning as L

    from shallownet import interrupt, training
    from shallownet.cli.train import load

    class SignalAtFitStart(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            os.kill(os.getpid(), signal.SIGTERM)

    cfg, _ = load(None, [f"output.root={tmp_path}", *SHORT])
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupt.install()
    try:
        (run := tmp_path / "run").mkdir()
        summary = training.run(cfg, run, extra_callbacks=[SignalAtFitStart()])
        assert interrupt.requested() == signal.SIGTERM
    finally:
        interrupt.reset()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert summary["status"] == "interrupted" and summary["steps"] == 0
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 0


def test_a_stop_request_inside_a_long_sharpness_solve_ends_the_run_at_once(tmp_path):
    """A solve of ~1 minute (max_iter 3000 HVPs for 8 eigenvalues of the digits MLP, tol unreachable) is
    given up between two HVPs: the run ends within seconds, at the last complete state, with no sharpness
    logged for the state it was measuring (a resume measures it)."""
    proc = start("train", f"output.root={tmp_path}", "model.kind=mlp", "train.max_steps=5", "output.progress=false",
                 "monitor.sharpness.every_n_steps=1", "monitor.sharpness.tol=1e-300",
                 "monitor.sharpness.max_iter=3000", "monitor.sharpness.top_k=8")
    run = tmp_path / "train" / "version_0"
    wait_until(lambda: any(run.glob("events.out.tfevents.*")), "training to start")
    time.sleep(3.0)  # inside the first solve
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert time.monotonic() - signalled < 15.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 0 and summary["final"]["sharpness"] is None
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 0
    logged = events.read_metrics(run)
    assert "curvature/sharpness" not in logged and list(logged["dynamics/loss"][0]) == [0]


def _file_size_limit(limit: int):
    """preexec_fn: files of at most `limit` bytes, and write() failing with EFBIG (not SIGXFSZ killing us)."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_checkpoint_that_cannot_be_written_is_named_and_the_run_ends_failed(tmp_path):
    """The digits MLP's checkpoint (about 450 kB) passes a 100 kB file-size limit that its logs fit in."""
    result = subprocess.run([EXE, "train", "model.kind=mlp", "train.max_steps=2", "monitor.sharpness.every_n_steps=0",
                             f"output.root={tmp_path}", "output.progress=false"],
                            capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=_file_size_limit(100_000))
    assert result.returncode == 1, result.stderr[-3000:]
    run = tmp_path / "train" / "version_0"
    (line,) = result.stderr.strip().splitlines()
    assert f"{run / 'last.ckpt'}: File too large (errno EFBIG)" in line, line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "last.ckpt" in summary["reason"] and "EFBIG" in summary["reason"]
    assert not (run / "last.ckpt").exists() and not list(run.glob("*.partial"))


def test_a_file_that_cannot_be_written_ends_the_run_failed_in_one_line(tmp_path):
    """A file-size limit (works without root, unlike mounting a small tmpfs) stands in for a full disk: the
    config and summary fit, grid.npz does not."""
    result = subprocess.run([EXE, "sweep", f"output.root={tmp_path}", "output.progress=false", "grid.lr.num=60",
                             "grid.scale.num=60", "train.max_steps=200", "output.tensorboard=false"],
                            capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=_file_size_limit(20000))
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    run = tmp_path / "figure3" / "version_0"
    assert f"{run / 'grid.npz'}: File too large (errno EFBIG)" in lines[0], lines[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "grid.npz" in summary["reason"] and "EFBIG" in summary["reason"]
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "summary.json"]  # nothing half-written
