"""Fixed cost of each command against the bare import of torch (and lightning), measured side by side.

    python benchmarks/bench_startup.py [--repeat 3]

For each command: wall time from process start to exit (median of --repeat runs, in a fresh folder), the
run's own work (training wall time from summary.json, or the sweep's simulation time), and the rest
(imports, set-up, writing) against `python -c "import torch, lightning"`. Goals (issue 10): --help under
1 s; a default train run within 1.5x of the bare torch+lightning import plus its training time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def median_of(repeat: int, argv: list[str], work=None) -> tuple[float, float]:
    """(median wall time, median work time reported by the run) over fresh folders."""
    walls, works = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            walls.append(timed(argv, Path(tmp)))
            works.append(work(Path(tmp)) if work else 0.0)
    return statistics.median(walls), statistics.median(works)


def summary(folder: Path) -> dict:
    return json.loads(next(folder.rglob("summary.json")).read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    py, cli = str(BIN / "python"), str(BIN / "shallownet")
    torch_only, _ = median_of(repeat, [py, "-c", "import torch"])
    bare, _ = median_of(repeat, [py, "-c", "import torch, lightning"])
    print(f"python -c 'import torch'             {torch_only:6.2f} s")
    print(f"python -c 'import torch, lightning'  {bare:6.2f} s   (the bare import cost)")
    help_wall, _ = median_of(repeat, [cli, "--help"])
    print(f"shallownet --help                    {help_wall:6.2f} s   (goal < 1 s)")
    wall, work = median_of(repeat, [cli, "train"], lambda d: summary(d)["wall_time_s"])
    print(f"shallownet train (defaults)          {wall:6.2f} s   training {work:.2f} s; "
          f"wall / (bare import + training) = {wall / (bare + work):.2f}x (goal <= 1.5x)")
    wall, work = median_of(repeat, [cli, "sweep"], lambda d: summary(d)["timing"]["simulation_seconds"])
    print(f"shallownet sweep (defaults)          {wall:6.2f} s   simulation {work:.2f} s; "
          f"fixed cost {wall - work:.2f} s = {(wall - work) / torch_only:.2f}x the torch import")
    wall, _ = median_of(repeat, [cli, "sweep", "grid.lr.num=3", "grid.scale.num=3"])
    print(f"shallownet sweep (3 x 3 grid)        {wall:6.2f} s   = {wall / torch_only:.2f}x the torch import")


if __name__ == "__main__":
    main()
