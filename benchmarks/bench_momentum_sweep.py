"""Config-steps per second of the momentum sweep engine against what a user would write, and an arithmetic bound.

    python benchmarks/bench_momentum_sweep.py [--device cuda]

A config-step is one step of torch.optim.SGD(momentum=beta) on one run. Measured side by side in one process:
the numba momentum kernel (heavy ball and Nesterov, all runs busy for the whole budget, and on the Figure-3
grid at beta = 0.9 where runs stop on their own), the same recursion as torch tensors, a plain Python loop
running torch.optim.SGD with autograd on one run's (a, b) after another, and the GD kernel (kernel.py) on
bench_sweep.py's busy runs. The bound is bench_sweep.py's: cores x clock x 2 FP ports x float64 lanes per
vector / flops per config-step.
"""

from __future__ import annotations

import argparse
import os
import re

import numba
import numpy as np
import torch
from bench_sweep import FP_PORTS, best_rate, busy_runs, machine  # this folder is on sys.path as a script runs

from shallownet.config import load_config
from shallownet.sweep import momentum_kernel
from shallownet.sweep.grid import SweepConfig, build_grid
from shallownet.sweep.kernel import run_uv_numba
from shallownet.sweep.momentum import run_momentum_torch, simulate_momentum
from shallownet.sweep.momentum_kernel import run_momentum_numba

PHI, TOL, DIVERGENCE, BETA = 1.0, 1e-8, 1e12, 0.9
# Floating-point operations per config-step in momentum_kernel.py: alpha^2 U0 and gamma^2 V0 4, eps 3,
# lam 2, eps alpha and eps gamma 2, the two buffers 4, the two positions 4, eta*eps 1, max 1. Nesterov
# adds beta*buffer' and its sum for each position: 4. Compares, selects and the flushes come on top.
FLOPS = {"heavy ball": 21, "Nesterov": 25}
GD_FLOPS = 16  # kernel.py, as bench_sweep.py counts them


def busy_momentum(n, seed=0):
    """Runs that all take every step of a 2000-step budget: eta in (1e-4, 2e-4) with beta = 0.9 (an effective
    step eta / (1 - beta) <= 2e-3) from U = 4.5, V = 0.3, which needs some 4000 steps to reach |eps| <= 1e-8.
    The kernel is branch-free, so its cost per step does not depend on the values (subnormals are flushed)."""
    return np.full(n, 4.5), np.full(n, 0.3), np.random.default_rng(seed).uniform(1e-4, 2e-4, n)


def _busy(steps_taken, steps):
    assert (steps_taken == steps).all(), "some benchmark runs stopped early"
    return int(steps_taken.sum())


def numba_busy(nesterov, n=1 << 17, steps=2000):
    u0, v0, eta = busy_momentum(n)
    beta = np.full(n, BETA)
    momentum_kernel.load_kernel(nesterov)
    return best_rate(lambda: _busy(run_momentum_numba(u0, v0, eta, beta, PHI, TOL, DIVERGENCE, steps, nesterov)[5],
                                   steps))


def numba_figure3(nesterov):
    grid = build_grid(load_config(SweepConfig, None, []))
    eta, index = grid.runs()
    return best_rate(lambda: simulate_momentum(eta, BETA, index, grid.a0, grid.b0, grid.phi, grid.rule,
                                               nesterov=nesterov, chunk_size=grid.size).steps.sum())


def gd_busy(n=1 << 17, steps=2000):
    eta, a, b = busy_runs(n)
    u0, v0 = np.full(n, (a + b) @ (a + b)), np.full(n, (a - b) @ (a - b))
    run_uv_numba(u0[:8], v0[:8], eta[:8], PHI, TOL, DIVERGENCE, 3)
    # a chaotic orbit may pass |eps| <= tol: bench_sweep.py counts the steps taken, as here
    return best_rate(lambda: run_uv_numba(u0, v0, eta, PHI, TOL, DIVERGENCE, steps)[4].sum())


def torch_path(nesterov, n=1 << 17, steps=200, device="cpu"):
    u0, v0, eta = busy_momentum(n)
    beta = np.full(n, BETA)
    run_momentum_torch(u0[:8], v0[:8], eta[:8], beta[:8], PHI, TOL, DIVERGENCE, 600, nesterov=nesterov,
                       device=device)  # warm up (and the graph path on CUDA)

    def go():
        steps_taken = run_momentum_torch(u0, v0, eta, beta, PHI, TOL, DIVERGENCE, steps, nesterov=nesterov,
                                         device=device)[5]
        return _busy(steps_taken.cpu().numpy(), steps)
    return best_rate(go, repeats=2)


def plain_sgd_loop(nesterov, n=8, steps=300):
    """What a user would write: one run after another, torch.optim.SGD with autograd on its own (a, b), the
    stop rule checked before every step."""
    rng = np.random.default_rng(0)
    u_dir, v_dir = rng.standard_normal((2, 10))
    u_dir *= np.sqrt(4.5) / np.linalg.norm(u_dir)
    v_dir *= np.sqrt(0.3) / np.linalg.norm(v_dir)
    a_np, b_np = (u_dir + v_dir) / 2, (u_dir - v_dir) / 2
    eta = busy_momentum(n)[2]

    def go():
        done = 0
        for rate in eta:
            a = torch.tensor(a_np, requires_grad=True)
            b = torch.tensor(b_np, requires_grad=True)
            opt = torch.optim.SGD([a, b], lr=float(rate), momentum=BETA, nesterov=nesterov)
            for _ in range(steps):
                residual = a @ b - PHI
                with torch.no_grad():
                    norm = (a @ a + b @ b).item()
                if abs(residual.item()) <= TOL or not norm <= DIVERGENCE:
                    break
                opt.zero_grad()
                (0.5 * residual**2).backward()
                opt.step()
                done += 1
        return done
    return best_rate(go, repeats=2)  # the first run also warms autograd and the optimizer up


def compiled_lanes() -> int:
    """float64 lanes of the vector arithmetic LLVM emitted for the kernel's block loop, read off the assembly
    of a fresh (uncached) compile: 8 for zmm, 4 for ymm, 2 for xmm registers, 1 where nothing vectorised."""
    block = numba.njit(momentum_kernel._run_block.py_func)
    b = momentum_kernel.BLOCK
    block(np.zeros(5 * b), np.zeros(b, dtype=np.int64), np.ones(4 * b), PHI, TOL, DIVERGENCE, 3, ())
    (asm,) = block.inspect_asm().values()
    counts = {lanes: len(re.findall(rf"v(?:mul|add|sub)pd\s[^\n]*%{reg}", asm))
              for lanes, reg in ((8, "zmm"), (4, "ymm"), (2, "xmm"))}
    return max(counts, key=counts.get) if any(counts.values()) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="also time the torch path here (e.g. cuda)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device")

    cores, mhz, lanes, avx512 = machine()
    compiled = compiled_lanes()
    print(f"machine: {cores} cores (numba threads), {mhz:.0f} MHz (/proc/cpuinfo), {lanes} float64 lanes per "
          f"vector{' (AVX-512 present)' if avx512 else ''}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"the momentum kernel compiled to {compiled}-lane float64 vector arithmetic (its assembly)")
    bounds = {}
    for name, flops in FLOPS.items():
        bounds[name] = cores * mhz * 1e6 * FP_PORTS * lanes / flops
        print(f"arithmetic bound, {name}: {cores} cores x {mhz / 1e3:.2f} GHz x {FP_PORTS} FP ports x {lanes} "
              f"lanes / {flops} flops per config-step = {bounds[name]:.3g} config-steps/s")
    print()

    rates = {}
    for name, nesterov in (("heavy ball", False), ("Nesterov", True)):
        rates[f"numba, {name}, 2^17 runs x 2000 steps, all busy"] = numba_busy(nesterov)
        rates[f"numba, {name}, figure3 grid, beta {BETA}, runs stop on their own"] = numba_figure3(nesterov)
        rates[f"torch recursion, cpu, {name}, 2^17 runs x 200 steps"] = torch_path(nesterov)
        rates[f"plain loop, torch.optim.SGD + autograd, {name}, 8 runs x 300 steps"] = plain_sgd_loop(nesterov)
        if args.device != "cpu":
            rates[f"torch recursion, {args.device}, {name}, 2^20 runs x 2000 steps"] = torch_path(
                nesterov, 1 << 20, 2000, args.device)
    rates["GD kernel (kernel.py), bench_sweep's busy runs, 2^17 x 2000"] = gd_busy()
    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"{name:{width}s}  {rate:10.3g} config-steps/s")
    gd = rates["GD kernel (kernel.py), bench_sweep's busy runs, 2^17 x 2000"]
    print()
    for name in FLOPS:
        engine = rates[f"numba, {name}, 2^17 runs x 2000 steps, all busy"]
        plain = rates[f"plain loop, torch.optim.SGD + autograd, {name}, 8 runs x 300 steps"]
        torch_cpu = rates[f"torch recursion, cpu, {name}, 2^17 runs x 200 steps"]
        print(f"{name:10s}: numba / plain loop = {engine / plain:9.3g}x   "
              f"numba / torch cpu = {engine / torch_cpu:6.3g}x   numba / bound = {engine / bounds[name]:6.1%}   "
              f"numba / GD kernel = {engine / gd:5.2f}x in config-steps/s, "
              f"{engine * FLOPS[name] / (gd * GD_FLOPS):5.2f}x in flop/s")


if __name__ == "__main__":
    main()
