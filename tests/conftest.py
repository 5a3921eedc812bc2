"""Shared test helpers: running the CLI in-process and reading its run folders back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shallownet.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' tensors are tiny: torch's intra-op threads only contend with each other and with other
    processes (tiny float64 gradients took 30x longer with two threads on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_dirs(root: Path) -> list[Path]:
    """Every run folder (a folder holding config.yaml) under root; asserts that nothing else was written
    there (a stray folder or file left by a failed run counts too)."""
    if not root.exists():
        return []
    assert any(root.iterdir()), f"{root} was created but left empty"
    dirs = sorted(p.parent for p in root.rglob("config.yaml"))
    assert dirs or not any(root.iterdir()), f"{root} holds no run folder but {list(root.iterdir())}"
    stray = [p for p in root.rglob("*") if not any(p == d or d in p.parents or p in d.parents for d in dirs)]
    assert not stray, f"written outside any run folder: {stray}"
    return dirs


@pytest.fixture
def cli(tmp_path, capsys):
    """Call `shallownet COMMAND ...` in-process with output.root in tmp_path.

    Returns (exit code, stdout, stderr, [run folders created]).
    """
    root = tmp_path / "runs"

    def call(command: str, *args: str, config: Path | None = None):
        argv = [command] + ([str(config)] if config else []) + [f"output.root={root}", *args]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err, run_dirs(root)

    return call


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
