"""Full-batch runs under Lightning's DDP equal the one-process run: real `shallownet train` processes with
2 gloo ranks (torchrun and Lightning's own launcher), against the same run in one process.

Exactness: parameters after k steps to 1e-12, every logged sharpness (and every other logged value) to
1e-10, the same summary, one run folder holding the same files. The data is split unevenly (301 and 31
rows over 2 ranks; with chunks, a different number of backward passes per rank).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shallownet import distributed, events
from shallownet.cli import main
from shallownet.distributed import RUN_DIR_ENV, block, shard
from shallownet.registry import FullBatchData
from tests.conftest import REPO, read_summary, run_dirs

EXE = Path(sys.executable).with_name("shallownet")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "shallownet",
            "train"]
LAUNCHER = [str(EXE), "train", "trainer.devices=2", "trainer.strategy=ddp"]  # Lightning starts rank 1 itself
ENV = {key: value for key, value in os.environ.items() if key != RUN_DIR_ENV} | {"OMP_NUM_THREADS": "1"}
QUIET = ["output.progress=false"]
MLP = ["model.kind=mlp", "data.kind=digits", "model.widths=[16]", "data.n_train=301", "train.tol=1e-300", *QUIET]
DEEP = ["model.kind=deep_linear", "data.kind=matrix_regression", "data.n_samples=31", "model.hidden=[5,3]",
        "train.chunk_size=5", "train.tol=1e-300", "monitor.sharpness.top_k=2", *QUIET]  # 16 rows: 4 chunks, 15: 3
MAY_DIFFER = ("curvature/hvp_count", "curvature/residual")  # how the solver got there, not what it found


# --- without processes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("total, world", [(301, 2), (31, 3), (7, 7), (10, 4), (5, 1)])
def test_blocks_cover_every_row_once_and_differ_by_at_most_one(total, world):
    blocks = [block(total, rank, world) for rank in range(world)]
    rows = [r for start, size in blocks for r in range(start, start + size)]
    assert rows == list(range(total))
    sizes = [size for _, size in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shards_split_train_and_test_rows_without_padding():
    x, y = torch.arange(15.0)[:, None], torch.arange(15)
    data = FullBatchData(x[:11], y[:11], x[11:], y[11:], target=None)
    parts = [shard(data, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([p.x for p, _ in parts]), data.x)
    assert torch.equal(torch.cat([p.y_test for p, _ in parts]), data.y_test)
    assert [(s.rows, s.total, s.test_rows, s.test_total) for _, s in parts] == [(6, 11, 2, 4), (5, 11, 2, 4)]
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        shard(FullBatchData(x[:2], y[:2]), 0, 3)


def test_a_process_started_by_lightnings_launcher_takes_rank_zeros_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "given"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not distributed.is_main_process()
    assert distributed.run_folder(lambda: pytest.fail("a rank > 0 created a folder")) == tmp_path / "given"
    monkeypatch.setenv("LOCAL_RANK", "0")  # the process the user started: its own folder
    assert distributed.is_main_process() and distributed.run_folder(lambda: tmp_path / "new") == tmp_path / "new"


def test_under_torchrun_the_trainer_takes_the_launchers_layout(monkeypatch, cli):
    from shallownet.config import RunConfig, load_config
    from shallownet.training import trainer_options

    for key, value in {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "3",
                       "LOCAL_RANK": "1", "GROUP_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    options = trainer_options(load_config(RunConfig, None, []))
    assert (options["devices"], options["num_nodes"], options["strategy"]) == (2, 2, "ddp")
    options = trainer_options(load_config(RunConfig, None, ["trainer.devices=2", "trainer.num_nodes=2"]))
    assert (options["devices"], options["num_nodes"]) == (2, 2)
    code, _, err, dirs = cli("train", "data.n_points=8", "trainer.devices=3")  # 3 x 2 nodes is not 4 processes
    assert code == 2 and "the launcher started 4 processes" in err and dirs == [], err


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=vgg", "data.kind=digits", "model.channels=[2]", "model.hidden=0", "model.batch_norm=true",
      "trainer.devices=2", "trainer.strategy=ddp"], "BatchNorm"),
    (["trainer.devices=2", "trainer.strategy=ddp"], "1 training rows, fewer than the 2 processes"),
    (["trainer.devices=2", "trainer.strategy=ddp_spawn"], "trainer.strategy"),
    (["trainer.strategy=fsdp"], "trainer.strategy"),
    (["trainer.num_nodes=2", "trainer.strategy=ddp"], "torchrun or srun"),
])
def test_what_ddp_cannot_run_exactly_is_refused_before_anything_is_written(cli, overrides, message):
    code, _, err, dirs = cli("train", *overrides)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert dirs == []


# --- two gloo processes --------------------------------------------------------------------------------

def launch(command: list[str], *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([*command, *overrides], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_process(root: Path, *overrides: str) -> Path:
    """The same run in this process (the reference)."""
    assert main(["train", f"output.root={root}", *overrides]) == 0
    (run_dir,) = run_dirs(root)
    return run_dir


def close(a, b, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def assert_same_summary(got: dict, want: dict, path: str = "summary") -> None:
    assert got.keys() == want.keys(), path
    for key in want:
        if key in ("wall_time_s", "provenance"):
            continue
        g, w = got[key], want[key]
        if isinstance(w, dict):
            assert_same_summary(g, w, f"{path}.{key}")
        elif isinstance(w, float):
            assert isinstance(g, float) and close(g, w, 1e-10), (f"{path}.{key}", g, w)
        else:
            assert g == w, (f"{path}.{key}", g, w)


def assert_same_run(got: Path, want: Path, fits: tuple[int, int] = (1, 1)) -> None:
    """Parameters to 1e-12, every logged value (sharpness included) to 1e-10 at the same steps, the same
    summary and the same files (one TensorBoard events file per fit: `fits`)."""
    def kinds(run_dir):
        return sorted("events" if p.name.startswith("events.out.tfevents") else p.name for p in run_dir.iterdir())
    assert [kinds(got).count("events"), kinds(want).count("events")] == list(fits)
    assert sorted(set(kinds(got))) == sorted(set(kinds(want)))
    params = [torch.load(d / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"] for d in (got, want)]
    assert params[0].keys() == params[1].keys()
    for name in params[1]:
        assert params[0][name].dtype == torch.float64
        assert torch.allclose(params[0][name], params[1][name], rtol=0, atol=1e-12), name
    logged = [events.read_metrics(d) for d in (got, want)]
    assert logged[0].keys() == logged[1].keys() and any(t.startswith("curvature/") for t in logged[1])
    for tag, (steps, values) in logged[1].items():
        np.testing.assert_array_equal(logged[0][tag][0], steps, err_msg=tag)
        if tag not in MAY_DIFFER:
            np.testing.assert_allclose(logged[0][tag][1], values, rtol=1e-10, atol=1e-12, err_msg=tag)
    in_tensorboard = events.read_scalars(got)  # written by rank 0 only, every step once
    for tag, (steps, _) in events.read_scalars(want).items():
        np.testing.assert_array_equal(in_tensorboard[tag][0], steps, err_msg=tag)
    assert_same_summary(read_summary(got), read_summary(want))


@pytest.mark.distributed
def test_torchrun_on_the_digits_mlp_is_the_one_process_run(tmp_path):
    config = [*MLP, "train.max_steps=6", "monitor.sharpness.every_n_steps=2"]
    done = launch(TORCHRUN, f"output.root={tmp_path / 'ddp'}", *config)
    (run_dir,) = run_dirs(tmp_path / "ddp")  # one folder, written by rank 0
    assert done.stdout.count("run folder:") == 1  # printed by rank 0 only
    assert read_summary(run_dir)["status"] == "max_steps" and read_summary(run_dir)["steps"] == 6
    assert_same_run(run_dir, one_process(tmp_path / "one", *config))


@pytest.mark.distributed
def test_torchrun_on_a_deep_linear_net_with_uneven_chunks_is_the_one_process_run(tmp_path):
    config = [*DEEP, "train.max_steps=7", "monitor.sharpness.every_n_steps=3"]
    launch(TORCHRUN, f"output.root={tmp_path / 'ddp'}", *config)
    (run_dir,) = run_dirs(tmp_path / "ddp")
    metrics = events.read_metrics(run_dir)
    assert "curvature/eigenvalue_2" in metrics and "dynamics/imbalance_fro_2" in metrics
    assert_same_run(run_dir, one_process(tmp_path / "one", *config))


@pytest.mark.distributed
def test_a_stop_request_on_rank_zero_stops_both_ranks_and_the_run_resumes_under_torchrun(tmp_path):
    """Lightning's launcher (one command, rank 1 started by Lightning), SIGTERM to rank 0 only: both ranks
    stop at the same step (rank 1 never saw the signal), then a torchrun resume finishes the run, which
    equals the unbroken one-process run."""
    config = [*MLP, "optim.lr=0.05", "monitor.sharpness.every_n_steps=3", "train.checkpoint_every_n_steps=5"]
    root = tmp_path / "ddp"
    proc = subprocess.Popen([*LAUNCHER, f"output.root={root}", *config, "train.max_steps=1000000"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob("*/version_0/last.ckpt")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    (run_dir,) = run_dirs(root)
    summary = read_summary(run_dir)
    stopped = summary["steps"]
    assert summary["status"] == "interrupted" and 5 <= stopped < 1000000 and out.count("INTERRUPTED") == 1
    assert torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == stopped

    total = stopped + 4
    launch(TORCHRUN, f"train.resume={run_dir}", f"train.max_steps={total}")
    assert run_dirs(root) == [run_dir] and read_summary(run_dir)["steps"] == total
    reference = one_process(tmp_path / "one", *config, f"train.max_steps={total}")
    assert_same_run(run_dir, reference, fits=(2, 1))
