"""The sweep split over two torchrun processes (gloo) merges to exactly the single-process result."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from shallownet.sweep.distributed import PIECE, share
from tests.conftest import CONFIGS, REPO, read_summary, run_dirs

# 3000 runs: three pieces of 1024, dealt 2 to rank 0 and 1 to rank 1.
GRID = ["grid.lr.num=60", "grid.scale.num=50", "train.max_steps=3000", "output.tensorboard=false",
        "output.progress=false"]


@pytest.mark.parametrize("n_runs, world", [(1, 2), (PIECE * 3 + 5, 2), (PIECE * 7, 3), (10, 1)])
def test_shares_cover_every_run_once(n_runs, world):
    shares = [share(n_runs, rank, world) for rank in range(world)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(n_runs))


@pytest.mark.distributed
def test_two_gloo_processes_give_the_single_process_bits(tmp_path, cli):
    config = str(CONFIGS / "sweep.yaml")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "-m", "shallownet", "sweep", config, *GRID, f"output.root={tmp_path / 'split'}"]
    done = subprocess.run(launch, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    (split,) = run_dirs(tmp_path / "split")
    assert read_summary(split)["timing"]["processes"] == 2

    code, _, err, (single,) = cli("sweep", *GRID, config=CONFIGS / "sweep.yaml")
    assert code == 0, err
    merged, alone = np.load(split / "grid.npz"), np.load(single / "grid.npz")
    assert sorted(merged.files) == sorted(alone.files)
    for name in merged.files:
        a, b = merged[name], alone[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name  # bitwise, NaNs included
