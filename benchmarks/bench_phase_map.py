"""Run-steps per second of the vectorised real-net engine (R stacked MLPs, one vmapped step) against a loop
of single runs of the same nets (the same engine with one run per chunk) and a plain torch loop (one
nn.Module per run, autograd, p -= lr g), on digits, in one process.

    python benchmarks/bench_phase_map.py [--runs 16 64 256] [--steps 50] [--loop-runs 16] [--device cpu]

Every run goes the full budget (tol 1e-30, small step sizes: none converges or diverges), no sharpness
cadence; the loop is timed on --loop-runs of the runs (its rate does not depend on R). Prints one table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shallownet.config import load_config
from shallownet.stop import StopRule
from shallownet.sweep.real_grid import RealSweepConfig, validate
from shallownet.sweep.real_runner import RealSweep
from shallownet.sweep.vmap_engine import simulate_real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--loop-runs", type=int, default=16)
    parser.add_argument("--widths", default="[32]")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg = load_config(RealSweepConfig, None, [f"model.widths={args.widths}", f"data.n_train={args.n_train}",
                                              f"engine.device={args.device}", "sharpness.every_n_steps=0"])
    validate(cfg)
    sweep = RealSweep(cfg)
    rule = StopRule(1e-30, 1e12, args.steps)

    def rate(r: int, chunk: int) -> float:
        lr, scale, seed = np.full(r, 0.01), np.linspace(0.5, 1.5, r), np.arange(r)
        start = time.perf_counter()
        runs = simulate_real(sweep.build, lr, scale, seed, sweep.loss_fn, sweep.x, sweep.y, rule, chunk_size=chunk,
                             initial_iterations=1, iterations=1)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        assert (runs.steps == args.steps).all()
        return r * args.steps / (time.perf_counter() - start)

    def plain(r: int) -> float:
        """One nn.Module per run, autograd and p -= lr g, the same steps: the loop without the engine."""
        start = time.perf_counter()
        for i in range(r):
            model = sweep.build(i, float(np.linspace(0.5, 1.5, r)[i]))
            for _ in range(args.steps):
                loss = sweep.loss_fn(model(sweep.x), sweep.y)
                grads = torch.autograd.grad(loss, list(model.parameters()))
                with torch.no_grad():
                    for p, g in zip(model.parameters(), grads, strict=True):
                        p.add_(g, alpha=-0.01)
        return r * args.steps / (time.perf_counter() - start)

    rate(2, 2)  # warm-up
    loop, bare = rate(args.loop_runs, 1), plain(args.loop_runs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; MLP widths "
          f"{args.widths} on {args.n_train} digits, {args.steps} steps per run, float64")
    print(f"loop of single runs: {loop:.4g} run-steps/s (timed on {args.loop_runs} runs)")
    print(f"plain torch loop (nn.Module, autograd.grad, p -= lr g): {bare:.4g} run-steps/s")
    print(f"{'R':>6} {'vectorised run-steps/s':>24} {'x engine loop':>14} {'x plain loop':>13}")
    for r in args.runs:
        vec = rate(r, r)
        print(f"{r:>6} {vec:>24.4g} {vec / loop:>14.2f} {vec / bare:>13.2f}")


if __name__ == "__main__":
    main()
