"""Config-steps per second of the sweep engine against what a user would write, and an arithmetic bound.

    python benchmarks/bench_sweep.py [--device cuda] [--skip-end-to-end]

A config-step is one GD step of one run. Measured in one process: the numba engine (all runs busy for
the whole budget, and on the Figure-3 grid where runs stop on their own), a plain Python loop over
configurations doing autograd GD on their own (a, b) tensors, the batched [N, d] torch path, the (U, V)
recursion vectorised over runs in plain numpy (what a researcher who knows the recursion would write
instead) and the same in torch; then `shallownet sweep` on configs/sweep.yaml end to end in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

from shallownet.config import load_config
from shallownet.sweep.engine import StopRule, simulate
from shallownet.sweep.grid import SweepConfig, build_grid
from shallownet.sweep.torch_paths import run_ab_torch, run_uv_torch

REPO = Path(__file__).resolve().parents[1]
FIGURE3 = REPO / "configs" / "sweep.yaml"
PHI, TOL, DIVERGENCE = 1.0, 1e-8, 1e12
# Floating-point operations per config-step in the kernel (kernel.py): eps 3, lam 2, eta*eps 1,
# 1 -+ e 2, U' 2, V' 2, P' 3, max 1. Compares, blends and the NaN/subnormal guards come on top.
FLOPS_PER_CONFIG_STEP = 16
FP_PORTS = 2  # vector floating-point instructions issued per cycle per core (Intel since Haswell)


def busy_runs(n, seed=0):
    """Runs that all take every step of the budget: eta in (1.2, 1.4) (chaos, theory.md section 6)
    from one initial point of width 10 with U = |a + b|^2 = 4.5, V = |a - b|^2 = 0.3 (lam(0) = 2.4)."""
    rng = np.random.default_rng(seed)
    u_dir, v_dir = rng.standard_normal((2, 10))
    u_dir *= np.sqrt(4.5) / np.linalg.norm(u_dir)
    v_dir *= np.sqrt(0.3) / np.linalg.norm(v_dir)
    return rng.uniform(1.2, 1.4, n), (u_dir + v_dir) / 2, (u_dir - v_dir) / 2


def best_rate(fn, repeats=3):
    """Highest config-steps/s over repeats; fn() returns the config-steps it did."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        done = fn()
        best = max(best, done / (time.perf_counter() - start))
    return best


def engine_busy(n=1 << 17, steps=2000):
    eta, a, b = busy_runs(n)
    rule_args = (PHI, StopRule(TOL, DIVERGENCE, steps))
    simulate(eta[:256], np.zeros(256, int), a[None], b[None], *rule_args)  # compile or load the cache

    def go():
        runs = simulate(eta, np.zeros(n, int), a[None], b[None], *rule_args, chunk_size=n)
        assert (runs.steps == steps).all()
        return runs.steps.sum()
    return best_rate(go)


def engine_figure3():
    grid = build_grid(load_config(SweepConfig, FIGURE3, []))
    eta, index = grid.runs()
    return best_rate(lambda: simulate(eta, index, grid.a0, grid.b0, grid.phi, grid.rule,
                                      chunk_size=grid.size).steps.sum())


def plain_python_loop(n=8, steps=300):
    """What a user would write: one run after another, autograd GD on its own (a, b) tensors."""
    eta, a_np, b_np = busy_runs(n)

    def go():
        done = 0
        for rate in eta:
            a = torch.tensor(a_np, requires_grad=True)
            b = torch.tensor(b_np, requires_grad=True)
            for _ in range(steps):
                residual = a @ b - PHI
                norm = (a.detach() @ a.detach() + b.detach() @ b.detach()).item()
                if abs(residual.item()) <= TOL or not norm <= DIVERGENCE:
                    break
                grad_a, grad_b = torch.autograd.grad(0.5 * residual**2, (a, b))
                with torch.no_grad():
                    a -= rate * grad_a
                    b -= rate * grad_b
                done += 1
        return done
    return best_rate(go, repeats=1)


def batched_ab(n=4096, steps=200, device="cpu"):
    eta, a, b = busy_runs(n)
    a0, b0 = np.tile(a, (n, 1)), np.tile(b, (n, 1))
    return best_rate(lambda: int(run_ab_torch(a0, b0, eta, PHI, TOL, DIVERGENCE, steps, device)[4].sum()),
                     repeats=2)


def torch_uv(n=1 << 17, steps=200, device="cpu"):
    eta, a, b = busy_runs(n)
    u0, v0 = np.full(n, (a + b) @ (a + b)), np.full(n, (a - b) @ (a - b))
    run_uv_torch(u0[:8], v0[:8], eta[:8], PHI, TOL, DIVERGENCE, 600, device)  # warm up (and graph path)

    def go():
        steps_taken = run_uv_torch(u0, v0, eta, PHI, TOL, DIVERGENCE, steps, device)[4]
        return int(steps_taken.sum())  # .sum() on the device, then one sync
    return best_rate(go, repeats=2)


def numpy_uv(n=1 << 17, steps=200):
    """The (U, V) recursion of theory.md section 3 over all runs at once as numpy arrays, with the stop rule
    as a mask: the vectorised version a user would write, without the engine's blocking and SIMD lanes."""
    eta, a, b = busy_runs(n)

    def go():
        u, v = np.full(n, (a + b) @ (a + b)), np.full(n, (a - b) @ (a - b))
        factor, taken = np.ones(n), np.zeros(n, dtype=np.int64)
        for _ in range(steps):
            eps = (u - v) * 0.25 - PHI
            active = (np.abs(eps) > TOL) & ((u + v) * 0.5 <= DIVERGENCE)
            e = np.where(active, eta * eps, 0.0)
            u, v, factor = (1.0 - e) ** 2 * u, (1.0 + e) ** 2 * v, factor * (1.0 - e * e)
            taken += active
        return int(taken.sum())
    return best_rate(go, repeats=2)


def end_to_end(extra=()):
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "shallownet", "sweep", str(FIGURE3), f"output.root={root}",
                               "output.progress=false", *extra], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return wall, done.stdout.strip().splitlines()[-1]


def machine():
    """Cores numba uses, clock (MHz) from /proc/cpuinfo, float64 lanes per vector from the CPU flags."""
    mhz, flags = None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key.strip() == "flags" and not flags:
                flags = value
    except OSError:
        pass
    # LLVM emits 256-bit vectors for this kernel even where AVX-512 exists (its default on Intel
    # cores, which mostly have one 512-bit FP unit): 4 float64 lanes per instruction.
    lanes = 4 if " avx2" in flags or " avx512f" in flags else 2
    return numba.get_num_threads(), mhz or 0.0, lanes, "avx512f" in flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="also time the torch paths here (e.g. cuda)")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device")

    cores, mhz, lanes, avx512 = machine()
    bound = cores * mhz * 1e6 * FP_PORTS * lanes / FLOPS_PER_CONFIG_STEP
    print(f"machine: {cores} cores (numba threads), {mhz:.0f} MHz (/proc/cpuinfo), {lanes} float64 lanes per "
          f"vector{' (AVX-512 present)' if avx512 else ''}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"arithmetic bound: {cores} cores x {mhz / 1e3:.2f} GHz x {FP_PORTS} FP ports x {lanes} lanes / "
          f"{FLOPS_PER_CONFIG_STEP} flops per config-step = {bound:.3g} config-steps/s\n")

    rates = {
        "engine (numba, 2^17 runs x 2000 steps, all busy)": engine_busy(),
        "engine (numba, figure3 grid, runs stop on their own)": engine_figure3(),
        "plain Python loop, autograd, one run at a time (8 runs x 300 steps)": plain_python_loop(),
        "batched [N, d] torch GD, cpu (4096 runs x 200 steps)": batched_ab(),
        "numpy (U, V) recursion, vectorised over runs (2^17 runs x 200 steps)": numpy_uv(),
        "torch (U, V) recursion, cpu (2^17 runs x 200 steps)": torch_uv(),
    }
    if args.device != "cpu":
        rates[f"torch (U, V) recursion, {args.device} (2^20 runs x 2000 steps)"] = torch_uv(
            1 << 20, 2000, args.device)
        rates[f"batched [N, d] torch GD, {args.device} (2^16 runs x 2000 steps)"] = batched_ab(
            1 << 16, 2000, args.device)
    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"{name:{width}s}  {rate:10.3g} config-steps/s")
    engine = rates["engine (numba, 2^17 runs x 2000 steps, all busy)"]
    plain = rates["plain Python loop, autograd, one run at a time (8 runs x 300 steps)"]
    batched = rates["batched [N, d] torch GD, cpu (4096 runs x 200 steps)"]
    print(f"\nengine / plain loop  = {engine / plain:10.3g}x   (target >= 1000x)")
    print(f"engine / batched     = {engine / batched:10.3g}x")
    numpy_rate = rates["numpy (U, V) recursion, vectorised over runs (2^17 runs x 200 steps)"]
    torch_rate = rates["torch (U, V) recursion, cpu (2^17 runs x 200 steps)"]
    print(f"engine / numpy (U,V) = {engine / numpy_rate:10.3g}x   (the same recursion, vectorised by hand)")
    print(f"engine / torch (U,V) = {engine / torch_rate:10.3g}x")
    print(f"engine / bound       = {engine / bound:10.2%}     (target >= 5e8 config-steps/s: "
          f"{'met' if engine >= 5e8 else 'NOT met'})")

    if not args.skip_end_to_end:
        wall, line = end_to_end()
        print(f"\nshallownet sweep configs/sweep.yaml, end to end (fresh process): {wall:.1f} s (target < 60 s)")
        print(f"  {line}")
        if args.device != "cpu":
            wall, line = end_to_end(["engine.backend=torch", f"engine.device={args.device}",
                                     "engine.chunk_size=1000000"])
            print(f"same on {args.device} (torch backend): {wall:.1f} s\n  {line}")


if __name__ == "__main__":
    main()
