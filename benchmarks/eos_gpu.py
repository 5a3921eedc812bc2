"""An edge-of-stability run on the GPU: full-batch GD on 5,000 synthetic CIFAR-shaped images (written in
CIFAR-10's python format to a temporary folder, read back by the cifar10 loader), float32, the sharpness
(TF32 off while measuring) against 2/eta. Prints the timing and how close to 2/eta the sharpness hovers.

    python benchmarks/eos_gpu.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cifar_like(root: Path, n_per_batch: int = 1000, seed: int = 0) -> None:
    """data_batch_1..5, test_batch and batches.meta with random images whose labels a small net can fit."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 3072))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=n_per_batch)
        noise = rng.integers(-60, 61, size=(n_per_batch, 3072))
        data = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        with open(root / name, "wb") as file:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, file, protocol=2)
    with open(root / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, file, protocol=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    steps = parser.parse_args().steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar"
        root.mkdir()
        write_cifar_like(root)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "shallownet", "eos", "data.kind=cifar10", f"data.root={root}", "data.n_train=5000",
             "data.n_test=1000", "model.widths=[256]", f"train.max_steps={steps}",
             "processes=[{method: gd, lr: 0.02}, {method: gd, lr: 0.04}]",
             "train.device=cuda", "train.dtype=float32", "monitor.sharpness.every_n_steps=10",
             "monitor.sharpness.tol=1e-4", f"output.root={tmp}/runs", "output.progress=false"],
            capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(done.stdout[-3000:] or done.stderr[-3000:])
        if done.returncode:
            sys.exit(f"eos_gpu.py: the run exited with status {done.returncode} (its output is above)")
        summary = json.loads(next(Path(tmp, "runs").rglob("summary.json")).read_text())
    print(f"edge-of-stability run on 5000 CIFAR-shaped images, {steps} steps x {len(summary['rows'])} step sizes: "
          f"{wall:.1f} s end to end (target < 60 s)")
    for row in summary["rows"]:
        print(f"  {row['run']}: final loss {row['final_loss']:.4g}, sharpness {row['final_sharpness']:.4g}, "
              f"hovering {row.get('hovering')}")


if __name__ == "__main__":
    main()
