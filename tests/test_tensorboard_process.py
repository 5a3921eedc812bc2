"""A real `tensorboard` process, default flags, on a finished `shallownet train` run: every contract tag is
served through its HTTP API (scalars, the histogram, the custom-scalars chart, hparams), and a scalar series
equals the run's metrics.csv up to float32 rounding."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from tests.conftest import read_summary

SCALARS = ["dynamics/loss", "dynamics/residual", "dynamics/norm", "dynamics/imbalance", "dynamics/imbalance_norm",
           "dynamics/imbalance_ratio", "curvature/sharpness", "curvature/stability_threshold",
           "curvature/sharpness_x_lr", "curvature/sharpness_over_threshold", "curvature/hvp_count",
           "curvature/residual", "process/step", "process/time"]  # docs/tags.md's shallow-net table, GD defaults
HISTOGRAMS = ["dynamics/imbalance_per_unit"]
HOST = "127.0.0.1"
STARTUP_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _request(port: int, path: str, body: dict | None = None):
    url = f"http://{HOST}:{port}/{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


def _wait_for(port: int, proc: subprocess.Popen, run: str, log: Path) -> None:
    """Until the server answers and lists every contract scalar of `run` (the loader works asynchronously)."""
    deadline = time.monotonic() + STARTUP_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tensorboard exited with status {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            tags = _request(port, "data/plugin/scalars/tags")
            if set(SCALARS) <= set(tags.get(run, {})):
                return
            last = tags
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as err:
            last = err
        time.sleep(0.5)
    raise AssertionError(f"tensorboard did not serve the run's scalars within {STARTUP_S} s (last answer: {last!r}; "
                         f"log: {log.read_text()[-2000:]})")


def _metrics_column(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get(tag)]
    return [int(row["step"]) for row in rows], [float(row[tag]) for row in rows]


def _stop(proc: subprocess.Popen) -> None:
    """End the tensorboard process we started and its process group (its data server), by id."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group is this process's own (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def test_tensorboard_serves_every_contract_tag(cli, tmp_path):
    code, _, err, (run_dir,) = cli("train", "train.max_steps=20", "train.tol=1e-300",
                                   "monitor.sharpness.every_n_steps=5", "output.progress=false")
    assert code == 0, err
    root = tmp_path / "runs"
    run = run_dir.relative_to(root).as_posix()  # train/version_0

    exe = Path(sys.executable).with_name("tensorboard")
    assert exe.is_file(), "the `tensorboard` executable is not installed beside the interpreter"
    port = _free_port()
    scratch = tmp_path / "tmp"  # TensorBoard's info files go to the temp folder: keep them in the test's
    scratch.mkdir()
    log = tmp_path / "tensorboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "--logdir", str(root), "--port", str(port), "--host", HOST],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        _wait_for(port, proc, run, log)

        assert run in _request(port, "data/runs")
        scalars = _request(port, "data/plugin/scalars/tags")[run]
        assert set(SCALARS) <= set(scalars), sorted(set(SCALARS) - set(scalars))
        histograms = _request(port, "data/plugin/histograms/tags").get(run, {})
        assert set(HISTOGRAMS) <= set(histograms), histograms

        layout = _request(port, "data/plugin/custom_scalars/layout")
        assert layout.get("category"), layout
        charted = [tag for category in layout["category"] for chart in category["chart"]
                   for tag in chart.get("multiline", {}).get("tag", [])]
        assert any("curvature/sharpness" in tag for tag in charted), charted
        assert any("curvature/stability_threshold" in tag for tag in charted), charted

        experiment = _request(port, "data/plugin/hparams/experiment", {"experimentName": ""})
        names = {info["name"] for info in experiment.get("hparamInfos", [])}
        assert {"outcome", "optim.lr", "model.width"} <= names, sorted(names)
        metrics = {info["name"]["tag"] for info in experiment.get("metricInfos", [])}
        assert {"hparams/final_loss", "hparams/final_sharpness", "hparams/steps"} <= metrics, metrics
        groups = _request(port, "data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
        sessions = [s for g in groups["sessionGroups"] for s in g["sessions"] if s["name"] == run]
        assert len(sessions) == 1, groups
        hparams = next(g["hparams"] for g in groups["sessionGroups"] if g["name"] == run)
        summary = read_summary(run_dir)
        assert hparams["outcome"] == summary["status"] == "max_steps"
        assert hparams["optim.lr"] == 0.1 and hparams["train.max_steps"] == 20

        query = urllib.parse.urlencode({"run": run, "tag": "dynamics/residual"})
        series = _request(port, f"data/plugin/scalars/scalars?{query}")
        steps, values = _metrics_column(run_dir, "dynamics/residual")
        assert [point[1] for point in series] == steps == list(range(21))
        np.testing.assert_array_equal(np.float32([point[2] for point in series]), np.float32(values))
        query = urllib.parse.urlencode({"run": run, "tag": "curvature/sharpness"})
        series = _request(port, f"data/plugin/scalars/scalars?{query}")
        steps, values = _metrics_column(run_dir, "curvature/sharpness")
        assert [point[1] for point in series] == steps == list(range(0, 21, 5))
        np.testing.assert_array_equal(np.float32([point[2] for point in series]), np.float32(values))
    finally:
        _stop(proc)
    assert proc.returncode is not None
