"""Cost per GD step of the Lightning path against a bare PyTorch loop doing the same work, side by side.

1. The shallow net, monitors on at every step (loss, eps, lam, Q, Qn, Q_i and the sharpness by the monitor's
   warm-started tracker) and off.
2. Real nets on scikit-learn's digits (an MLP and the small ReLU CNN), monitors off: full-batch GD in
   Lightning against a bare loop (goal: at most 1.1x).
3. The sharpness monitor on the digits MLP: its cost as a fraction of a training step at cadences 1 and 10,
   and its HVPs per logged step (goal: at most 5, warm-started).
4. Chunked gradients: the same full-batch GD with chunk_size rows per backward, against one chunk.

    python benchmarks/bench_train.py [--steps 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from shallownet import registry
from shallownet.config import RunConfig, load_config, validate_run
from shallownet.curvature import EigenTracker, HessianOperator
from shallownet.events import read_metrics
from shallownet.losses import LOSSES
from shallownet.training import build, quiet_lightning, run


def config(*overrides: str):
    cfg = load_config(RunConfig, None, ["train.tol=1e-300", "output.progress=false", *overrides])
    validate_run(cfg)
    return cfg


def lightning(cfg) -> tuple[float, list[float]]:
    """Seconds per step of `shallownet train`'s path (Lightning, loggers, monitors as configured), and the
    HVPs of each logged sharpness solve."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(cfg, Path(tmp), pieces=build(cfg))
        hvps = read_metrics(tmp).get("curvature/hvp_count", (None, []))[1]
    assert summary["steps"] == cfg.train.max_steps, summary["status"]
    return summary["wall_time_s"] / summary["steps"], list(hvps)


def bare(cfg, sharpness_every: int = 0) -> float:
    """Seconds per step of plain PyTorch full-batch GD on the same model and data (and the same tracker)."""
    kind = registry.model_kind(cfg.model.kind)
    data = registry.data_kind(cfg.data.kind).load(cfg, getattr(torch, cfg.train.dtype))
    model, loss_fn = kind.build(cfg, data), LOSSES[cfg.loss or kind.loss]
    params = [p for p in model.parameters() if p.requires_grad]
    tracker = EigenTracker(tol=cfg.monitor.sharpness.tol, max_iter=cfg.monitor.sharpness.max_iter)
    lr, steps = cfg.optim.lr, cfg.train.max_steps
    start = time.perf_counter()
    for step in range(1, steps + 1):
        grads = torch.autograd.grad(loss_fn(model(data.x), data.y), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
        if sharpness_every and step % sharpness_every == 0:
            operator = HessianOperator(model, loss_fn, (data.x, data.y))
            tracker.solve(operator)
            operator.release()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    steps = parser.parse_args().steps
    torch.set_num_threads(1)  # both sides alike; small tensors gain nothing from threads here
    quiet_lightning()
    common = [f"train.max_steps={steps}"]
    quiet = ["monitor.every_n_steps=1000000", "monitor.sharpness.every_n_steps=0"]
    lightning(config(*common, "optim.lr=0.01", *quiet))  # warm-up: imports and first-call costs

    print(f"cost per full-batch GD step over {steps} steps (float64, 1 thread)")
    print(f"{'':44s} {'Lightning':>10s} {'bare loop':>10s} {'ratio':>7s}")
    rows = [
        ("shallow net d=10, monitors on every step",
         config(*common, "optim.lr=0.01", "monitor.sharpness.every_n_steps=1"), 1),
        ("shallow net d=10, monitors off", config(*common, "optim.lr=0.01", *quiet), 0),
        ("digits MLP 64-200-200-10, monitors off", config(*common, "model.kind=mlp", *quiet), 0),
        ("digits CNN 2x(conv 32 + pool), monitors off", config(*common, "model.kind=cnn", *quiet), 0),
    ]
    for name, cfg, every in rows:
        lit, _ = lightning(cfg)
        plain = bare(cfg, every)
        print(f"{name:44s} {lit * 1e3:7.2f} ms {plain * 1e3:7.2f} ms {lit / plain:6.2f}x")

    print("\nsharpness monitor on the digits MLP (tol 1e-6, warm-started Lanczos)")
    base, _ = lightning(config(*common, "model.kind=mlp", *quiet))
    for every in (1, 10):
        cost, hvps = lightning(config(*common, "model.kind=mlp", "monitor.every_n_steps=1000000",
                                      f"monitor.sharpness.every_n_steps={every}", "monitor.sharpness.tol=1e-6"))
        warm = hvps[1:]  # the first solve starts cold
        print(f"  every {every:2d} steps: {cost * 1e3:7.2f} ms per step = {cost / base:5.2f}x a GD step; "
              f"{len(hvps)} solves, {sum(warm) / len(warm):.1f} HVPs per warm-started solve (first {hvps[0]:.0f})")
    print("\nchunked gradients on the digits MLP (1500 rows), the same full-batch GD")
    for chunk in (None, 500, 100):
        cost, _ = lightning(config(*common, "model.kind=mlp", *quiet, f"train.chunk_size={chunk or 'null'}"))
        print(f"  chunk_size {chunk or 'none':>4}: {cost * 1e3:7.2f} ms per step = {cost / base:5.2f}x one chunk")


if __name__ == "__main__":
    main()
