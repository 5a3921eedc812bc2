"""Cost per GD step of the Lightning path against a bare PyTorch loop doing the same work.

Both sides take the same GD steps on the same shallow net and compute, at every step, the same
quantities: loss, eps, lam, Q, Qn, Q_i and the sharpness (the monitor's warm-started Lanczos tracker on
Hessian-vector products, same tolerance). The Lightning side also writes them to TensorBoard. Then the default
`shallownet train` is timed end to end (target: under 30 s on 2 cores).

    python benchmarks/bench_train.py [--steps 400]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from shallownet import quantities
from shallownet.config import RunConfig, load_config
from shallownet.curvature import EigenTracker, HessianOperator
from shallownet.data import regression_points
from shallownet.model import ScalarLinearNet, initial_vectors
from shallownet.module import half_mse
from shallownet.training import fit

REPO = Path(__file__).resolve().parents[1]


def bare_loop(cfg, monitors: bool) -> float:
    """Seconds per step of plain PyTorch GD, computing the monitored quantities when asked."""
    model = ScalarLinearNet(*initial_vectors(cfg.model.width, seed=cfg.model.init.seed))
    x, y = regression_points(1, cfg.model.phi, 0.0, 0)
    tracker = EigenTracker(tol=cfg.monitor.sharpness.tol)  # the solver SharpnessMonitor uses, warm-started
    lr, steps = cfg.optim.lr, cfg.train.max_steps
    start = time.perf_counter()
    for _ in range(steps):
        loss = half_mse(model(x), y)
        grads = torch.autograd.grad(loss, [model.a, model.b])
        with torch.no_grad():
            model.a -= lr * grads[0]
            model.b -= lr * grads[1]
        if monitors:
            state = quantities.shallow_state(model.a, model.b, cfg.model.phi)
            with torch.no_grad():
                state["loss"] = float(half_mse(model(x), y))
                state["per_unit"] = quantities.imbalance_per_unit(model.a, model.b)
            operator = HessianOperator(model, half_mse, (x, y))
            state["sharpness"] = tracker.solve(operator).value
            operator.release()
    return (time.perf_counter() - start) / steps


def lightning_run(cfg) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        summary = fit(cfg, Path(tmp))
    assert summary["steps"] == cfg.train.max_steps, summary["status"]
    return summary["wall_time_s"] / summary["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    common = [f"train.max_steps={args.steps}", "train.tol=1e-300", "optim.lr=0.01"]
    on = load_config(RunConfig, None, [*common, "monitor.every_n_steps=1", "monitor.sharpness.every_n_steps=1"])
    off = load_config(RunConfig, None, [*common, "monitor.every_n_steps=1000000",
                                        "monitor.sharpness.every_n_steps=0"])
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead, and both sides get the same
    lightning_run(on)  # warm-up (imports, first-call overheads)
    rows = [
        ("monitors on, every step", lightning_run(on), bare_loop(on, monitors=True)),
        ("GD only (monitors off)", lightning_run(off), bare_loop(off, monitors=False)),
    ]
    print(f"cost per GD step over {args.steps} steps (width {on.model.width}, float64, 1 thread)")
    print(f"{'':26s} {'Lightning':>12s} {'bare loop':>12s} {'ratio':>7s}")
    for name, lit, bare in rows:
        print(f"{name:26s} {lit * 1e3:9.3f} ms {bare * 1e3:9.3f} ms {lit / bare:6.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "shallownet", "train", str(REPO / "configs" / "train.yaml"),
                        f"output.root={tmp}"], check=True, capture_output=True)
        print(f"default `shallownet train` end to end (process start to exit): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
