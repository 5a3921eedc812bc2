"""data.kind=file: a user's .npz, loaded without pickles, trained on as given; defects refused in one line
(exit 2) before any work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from shallownet.config import RunConfig, load_config
from shallownet.training import build, fit


def test_a_file_trains_the_diagonal_net_on_its_rows(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=12)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = load_config(RunConfig, None, ["data.kind=file", f"data.path={tmp_path / 'd.npz'}",
                                        "model.kind=diagonal_linear",
                                        "train.dtype=float64", "optim.method=sgd", "optim.batch_size=4",
                                        "train.max_steps=6", "train.tol=1e-300", "monitor.sharpness.every_n_steps=0"])
    pieces = build(cfg)
    assert torch.equal(pieces.module.data.x, torch.from_numpy(x)) and torch.equal(pieces.module.data.y,
                                                                                   torch.from_numpy(y))
    fit(pieces.module, pieces.datamodule, max_steps=6)
    assert pieces.module.trainer.global_step == 6


def write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((3, 2))}, "holds no array 'y'"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(4)}, "same number of rows"),
    ({"x": np.array([[0.0, np.nan]]), "y": np.zeros(1)}, "NaN"),
    ({"x": np.array([{"a": 1}], dtype=object), "y": np.zeros(1)}, "not an .npz of plain arrays"),
    (None, "no such file"),
])
def test_a_bad_file_is_refused_in_one_line_before_any_work(tmp_path, arrays, words):
    path = tmp_path / "missing.npz" if arrays is None else write(tmp_path, **arrays)
    root = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "shallownet", "train", f"output.root={root}", "data.kind=file",
                             f"data.path={path}", "model.kind=diagonal_linear"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-1000:]
    assert "data.path" in result.stderr and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not root.exists()
