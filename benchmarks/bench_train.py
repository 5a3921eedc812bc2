"""Cost per GD step of the Lightning path against a bare PyTorch loop doing the same work, side by side.

1. The shallow net, monitors on at every step (loss, eps, lam, Q, Qn, Q_i and the sharpness by the monitor's
   warm-started tracker) and off.
2. Real nets on scikit-learn's digits (an MLP and the small ReLU CNN), monitors off: full-batch GD in
   Lightning against a bare loop (goal: at most 1.1x).
3. The sharpness monitor on the digits MLP: its cost as a fraction of a training step at cadences 1 and 10,
   its HVPs per logged step (goal: at most 5, warm-started), and what a solve's residual tolerance buys: the
   largest relative error of the logged sharpness against a tight (residual 1e-11) solve at the same step.
4. Chunked gradients: the same full-batch GD with chunk_size rows per backward, against one chunk.

Each timing is the fastest of --repeats runs, the two sides interleaved, so that other work on the machine
(which only ever slows a run down) disturbs the ratios as little as it can.

    python benchmarks/bench_train.py [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from shallownet import registry
from shallownet.config import RunConfig, load_config, validate_run
from shallownet.curvature import EigenTracker, HessianOperator, lanczos
from shallownet.events import read_metrics
from shallownet.losses import LOSSES
from shallownet.training import build, quiet_lightning, run


def config(*overrides: str):
    cfg = load_config(RunConfig, None, ["train.tol=1e-300", "output.progress=false", *overrides])
    validate_run(cfg)
    return cfg


class StepClock(L.Callback):
    """Wall time from the first training batch's end to the last one's end: the steady per-step cost over
    steps 2..n, without the fit's set-up, the cold first step (allocator and kernel caches warming up) and
    the train-start / train-end logging that a run pays once. `timed` counts the steps measured."""

    def __init__(self):
        self.start, self.end, self.steps = None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end, self.steps = time.perf_counter(), self.steps + 1
        if self.start is None:
            self.start = self.end

    @property
    def timed(self) -> int:
        return self.steps - 1


def lightning(cfg) -> tuple[float, dict]:
    """Seconds per step of `shallownet train`'s path (Lightning, loggers, monitors as configured), and the
    logged metrics (tag -> (steps, values))."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(cfg, Path(tmp), pieces=build(cfg, [clock]))
        metrics = read_metrics(tmp)
    assert summary["steps"] == cfg.train.max_steps == clock.steps, summary["status"]
    return (clock.end - clock.start) / clock.timed, metrics


def plain_gd(cfg):
    """The run's model, loss and data outside Lightning, and one full-batch GD step on them (bare PyTorch)."""
    kind = registry.model_kind(cfg.model.kind)
    data = registry.data_kind(cfg.data.kind).build(cfg, getattr(torch, cfg.train.dtype))
    model, loss_fn = kind.build(cfg, data), LOSSES[cfg.loss or kind.loss]
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        grads = torch.autograd.grad(loss_fn(model(data.x), data.y), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(cfg.optim.lr * g)

    return model, loss_fn, data, step


def bare(cfg, sharpness_every: int = 0) -> float:
    """Seconds per step of plain PyTorch full-batch GD on the same model and data (and the same tracker)."""
    model, loss_fn, data, gd_step = plain_gd(cfg)
    tracker = EigenTracker(tol=cfg.monitor.sharpness.tol, max_iter=cfg.monitor.sharpness.max_iter)
    steps = cfg.train.max_steps
    gd_step()  # the cold first step, left out as the Lightning side leaves it out
    start = time.perf_counter()
    for step in range(2, steps + 1):
        gd_step()
        if sharpness_every and step % sharpness_every == 0:
            operator = HessianOperator(model, loss_fn, (data.x, data.y))
            tracker.solve(operator)
            operator.release()
    return (time.perf_counter() - start) / (steps - 1)


def fastest(repeats: int, *timers):
    """The fastest of `repeats` calls of each timer (seconds), the timers called in turn."""
    return [min(times) for times in zip(*([t() for t in timers] for _ in range(repeats)), strict=True)]


def reference_sharpness(cfg, steps: list[int]) -> dict[int, float]:
    """The top Hessian eigenvalue, solved to residual 1e-11, after each of `steps` GD steps of the bare loop."""
    model, loss_fn, data, gd_step = plain_gd(cfg)
    values, vector = {}, None
    for step in range(max(steps) + 1):
        if step in steps:
            operator = HessianOperator(model, loss_fn, (data.x, data.y))
            result = lanczos(operator, vector, tol=1e-11, max_iter=1000)
            operator.release()
            values[step], vector = result.value, result.vector
        gd_step()
    return values


def largest_error(metrics: dict, reference: dict[int, float]) -> float:
    """Largest relative error of the logged sharpness against the reference, over the steps both have."""
    logged = dict(zip(*metrics["curvature/sharpness"], strict=True))
    return max(abs(logged[s] - r) / abs(r) for s, r in reference.items() if s in logged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps, repeats = args.steps, args.repeats
    torch.set_num_threads(1)  # both sides alike; small tensors gain nothing from threads here
    quiet_lightning()
    common = [f"train.max_steps={steps}"]
    quiet = ["monitor.dynamics.every_n_steps=1000000", "monitor.sharpness.every_n_steps=0"]
    lightning(config(*common, "optim.lr=0.01", *quiet))  # warm-up: imports and first-call costs

    print(f"cost per full-batch GD step over {steps} steps (the CNN {max(steps // 4, 10)}; float64, 1 thread, "
          f"fastest of {repeats}; load average {os.getloadavg()[0]:.2f})")
    print(f"{'':44s} {'Lightning':>10s} {'bare loop':>10s} {'ratio':>7s}")
    rows = [
        ("shallow net d=10, monitors on every step",
         config(*common, "optim.lr=0.01", "monitor.sharpness.every_n_steps=1"), 1),
        ("shallow net d=10, monitors off", config(*common, "optim.lr=0.01", *quiet), 0),
        ("digits MLP 64-200-200-10, monitors off", config(*common, "model.kind=mlp", *quiet), 0),
        ("digits CNN 2x(conv 32 + pool), monitors off",  # a step costs ~0.4 s: a quarter of the steps will do
         config(f"train.max_steps={max(steps // 4, 10)}", "model.kind=cnn", *quiet), 0),
    ]
    for name, cfg, every in rows:
        lit, plain = fastest(repeats, lambda cfg=cfg: lightning(cfg)[0], lambda cfg=cfg, every=every: bare(cfg, every))
        print(f"{name:44s} {lit * 1e3:7.2f} ms {plain * 1e3:7.2f} ms {lit / plain:6.2f}x")

    mlp = config(*common, "model.kind=mlp", *quiet)
    print(f"\nsharpness monitor on the digits MLP (lr {mlp.optim.lr}, warm-started Lanczos); error: largest "
          "relative error of the logged sharpness against a residual-1e-11 solve, every 10 steps")
    reference = reference_sharpness(mlp, list(range(0, steps + 1, 10)))
    base = fastest(repeats, lambda: lightning(mlp)[0])[0]
    for tol in (1e-6, 1e-3):
        for every in (1, 10):  # one run each: a solve costs several GD steps, the noise is small beside it
            cost, metrics = lightning(config(*common, "model.kind=mlp", "monitor.dynamics.every_n_steps=1000000",
                                             f"monitor.sharpness.every_n_steps={every}",
                                             f"monitor.sharpness.tol={tol}"))
            hvps = metrics["curvature/hvp_count"][1]
            warm = hvps[1:]  # the first solve starts cold
            print(f"  tol {tol:.0e}, every {every:2d} steps: {cost * 1e3:7.2f} ms per step = {cost / base:5.2f}x a "
                  f"GD step; {sum(warm) / len(warm):4.1f} HVPs per warm-started solve (first {hvps[0]:.0f}); "
                  f"error {largest_error(metrics, reference):.1e}")

    print("\nchunked gradients on the digits MLP (1500 rows), the same full-batch GD")
    chunked = [config(*common, "model.kind=mlp", *quiet, f"train.chunk_size={chunk}") for chunk in (500, 100)]
    base, *costs = fastest(repeats, *(lambda cfg=cfg: lightning(cfg)[0] for cfg in (mlp, *chunked)))
    print(f"  chunk_size none: {base * 1e3:7.2f} ms per step")
    for cfg, cost in zip(chunked, costs, strict=True):
        print(f"  chunk_size {cfg.train.chunk_size:>4}: {cost * 1e3:7.2f} ms per step = {cost / base:5.2f}x one chunk")


if __name__ == "__main__":
    main()
