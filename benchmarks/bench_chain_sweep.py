"""Config-steps per second of the chain engine (depth-L scalar chains) on the CPU and of the fused GPU kernels.

    python benchmarks/bench_chain_sweep.py [--depth 4] [--skip-grid]

A config-step is one GD step of one run. Measured side by side in one process: the numba chain kernel
with every run busy for the whole budget, a plain Python loop doing autograd GD on one chain at a time
(what a user would write), and the shallow (U, V) kernel (shallownet.sweep.kernel) on busy runs; then the
chain engine on a grid where runs stop on their own. Bounds: cores x clock x 2 FP ports x float64 lanes
per vector / flops per config-step (chain_kernel.flops_per_config_step; 16 for the shallow kernel, as
bench_sweep.py counts it). GPU section (skipped with a line where numba sees no CUDA device): the fused
numba.cuda kernels (shallownet.sweep.cuda_kernels), kernel time only, against the card's FP64 rate, and
whether they give the CPU kernels' bits on a grid.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from bench_sweep import best_rate, machine  # this folder is on sys.path when a benchmark runs as a script

from shallownet.sweep.chain import chain_grid, run_chain_grid
from shallownet.sweep.chain_kernel import flops_per_config_step, run_chain_numba
from shallownet.sweep.engine import StopRule
from shallownet.sweep.kernel import run_uv_numba

PHI, TOL, DIVERGENCE = 1.0, 1e-8, 1e12
SHALLOW_FLOPS = 16  # kernel.py per config-step, as bench_sweep.py counts them
FP_PORTS = 2  # vector floating-point instructions issued per cycle per core
# FP64 vector (non-tensor) peak in FLOP/s, an FMA counted as 2: the kernels do no FMA, so each of their
# flops is one instruction and the instruction rate is half of this.
FP64_FLOPS = {"H100 PCIe": 25.6e12, "H100": 34e12, "H200": 34e12, "GH200": 34e12, "A100": 9.7e12,
              "V100": 7.8e12, "B200": 40e12}
GPU_TARGET = 1e11


def busy_chains(n, depth, seed=0):
    """Runs that take every step of the budget: eta within 4-12% above the stability threshold
    2 / (L Phi^(2-2/L)), where no minimum is stable (theory.md 8.2), from a mildly imbalanced chain."""
    threshold = 2.0 / (depth * PHI ** (2.0 - 2.0 / depth))
    eta = np.random.default_rng(seed).uniform(1.04, 1.12, n) * threshold
    w0 = np.tile(np.linspace(1.1, 0.9, depth), (n, 1))
    return w0, eta


def busy_uv(n, seed=0):
    """The shallow benchmark's busy runs: eta in (1.2, 1.4) (chaos), U = 4.5, V = 0.3."""
    return np.full(n, 4.5), np.full(n, 0.3), np.random.default_rng(seed).uniform(1.2, 1.4, n)


def _busy(steps_taken, steps):
    """Config-steps done; the runs are meant to stay busy (a chaotic orbit may still hit |eps| <= tol)."""
    assert (steps_taken == steps).mean() > 0.99, "more than 1% of the benchmark runs stopped early"
    return int(steps_taken.sum())


def chain_busy(depth, n=1 << 17, steps=2000):
    w0, eta = busy_chains(n, depth)
    run_chain_numba(w0[:8], eta[:8], PHI, TOL, DIVERGENCE, 10)  # compile or load the cache

    def go():
        return _busy(run_chain_numba(w0, eta, PHI, TOL, DIVERGENCE, steps)[3], steps)
    return best_rate(go)


def shallow_busy(n=1 << 17, steps=2000):
    u0, v0, eta = busy_uv(n)
    run_uv_numba(u0[:8], v0[:8], eta[:8], PHI, TOL, DIVERGENCE, 10)

    def go():
        return _busy(run_uv_numba(u0, v0, eta, PHI, TOL, DIVERGENCE, steps)[4], steps)
    return best_rate(go)


def plain_python_loop(depth, n=8, steps=300):
    """What a user would write: one chain after another, autograd GD on its own weight tensor."""
    w0, eta = busy_chains(n, depth)

    def go():
        done = 0
        for rate, start in zip(eta, w0, strict=True):
            w = torch.tensor(start, requires_grad=True)
            for _ in range(steps):
                residual = w.prod() - PHI
                norm = (w.detach() @ w.detach()).item()
                if abs(residual.item()) <= TOL or not norm <= DIVERGENCE:
                    break
                (grad,) = torch.autograd.grad(0.5 * residual**2, (w,))
                with torch.no_grad():
                    w -= rate * grad
                done += 1
        return done
    return best_rate(go, repeats=1)


def demo_grid(depth, num=200):
    """A log grid over eta in [0.005, 2 x threshold] and scale in [0.4, 1.6], T = 20 000, tol 1e-8."""
    threshold = 2.0 / (depth * PHI ** (2.0 - 2.0 / depth))
    rule = StopRule(TOL, DIVERGENCE, 20000)
    return chain_grid(np.geomspace(0.005, 2 * threshold, num), np.geomspace(0.4, 1.6, num), depth, PHI, rule)


def chain_grid_rate(depth):
    grid = demo_grid(depth)
    run_chain_grid(chain_grid(grid.eta[:2], grid.scale[:2], depth, PHI, grid.rule))
    return best_rate(lambda: run_chain_grid(grid, chunk_size=grid.size).steps.sum(), repeats=2), grid.size


def _time_kernel(kernel, host_arrays, scalars, steps_index):
    """Best config-steps/s of one launch over fresh device copies of host_arrays (kernel time only)."""
    from numba import cuda

    from shallownet.sweep import cuda_kernels

    n = host_arrays[-1].size
    best = 0.0
    for _ in range(3):
        dev = [cuda.to_device(a) for a in host_arrays]
        cuda.synchronize()
        start = time.perf_counter()
        cuda_kernels._launch(kernel, n, *dev, *scalars)
        cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = max(best, _busy(dev[steps_index].copy_to_host(), scalars[-1]) / elapsed)
    return best


def gpu_section(depth):
    from shallownet.sweep import cuda_kernels

    print("\n--- GPU: fused numba.cuda kernels ---")
    if cuda_kernels.simulator_enabled() or not cuda_kernels.cuda_available():
        print("skipped: numba sees no CUDA device (numba.cuda.is_available() is False)")
        return
    from numba import cuda

    name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else str(name)
    peak = next((rate for key, rate in FP64_FLOPS.items() if key in name), None)
    if peak is None:
        print(f"device {name}: FP64 rate unknown here; assuming an H100 SXM's 34 TFLOP/s for the bound")
        peak = 34e12
    ops = peak / 2  # FMA counted as 2 flops in the peak; these kernels issue one instruction per flop
    print(f"device {name}: FP64 {peak / 1e12:.1f} TFLOP/s (FMA = 2) -> {ops:.3g} FP64 instructions/s without FMA")

    n, steps = 1 << 22, 4000
    scalars = (PHI, TOL, DIVERGENCE, steps)
    u0, v0, eta = busy_uv(n)
    cuda_kernels.run_uv_cuda(u0[:8], v0[:8], eta[:8], PHI, TOL, DIVERGENCE, 10)  # compile
    uv_rate = _time_kernel(cuda_kernels._uv_kernel(), (u0, v0, np.ones(n), np.zeros(n), np.zeros(n, np.int64), eta),
                           scalars, 4)
    w0, eta = busy_chains(n, depth)
    cuda_kernels.run_chain_cuda(w0[:8], eta[:8], PHI, TOL, DIVERGENCE, 10)
    chain_rate = _time_kernel(cuda_kernels._chain_kernel(depth),
                              (np.ascontiguousarray(w0.T), np.ones(n), np.zeros(n), np.zeros(n, np.int64), eta),
                              scalars, 3)
    uv_bound, chain_bound = ops / SHALLOW_FLOPS, ops / flops_per_config_step(depth)
    print(f"shallow (U, V) kernel, 2^22 runs x {steps} steps: {uv_rate:10.3g} config-steps/s "
          f"({uv_rate / uv_bound:.1%} of {uv_bound:.3g} = FP64 ops / {SHALLOW_FLOPS} flops)")
    print(f"chain kernel L = {depth}, 2^22 runs x {steps} steps:   {chain_rate:10.3g} config-steps/s "
          f"({chain_rate / chain_bound:.1%} of {chain_bound:.3g} = FP64 ops / {flops_per_config_step(depth)} flops)")
    for label, rate in (("shallow", uv_rate), ("chain", chain_rate)):
        print(f"  {label}: target >= {GPU_TARGET:.0e} config-steps/s: {'met' if rate >= GPU_TARGET else 'NOT met'}")

    # the same bits as the CPU kernels on a grid where runs stop on their own
    grid = demo_grid(depth, 150)
    same_chain = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
        vars(run_chain_grid(grid, backend="cuda")).values(), vars(run_chain_grid(grid)).values(), strict=True))
    eta_all, index = grid.runs()
    u0, v0 = 4.5 * grid.scale[index] ** 2, 0.5 * grid.scale[index] ** 2
    args = (PHI, TOL, DIVERGENCE, 20000)
    same_uv = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
        cuda_kernels.run_uv_cuda(u0, v0, eta_all, *args), run_uv_numba(u0, v0, eta_all, *args), strict=True))
    print(f"same bits as the CPU kernels on a {grid.shape[0]} x {grid.shape[1]} grid (T = 20000): "
          f"chain {same_chain}, shallow {same_uv}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--skip-grid", action="store_true", help="skip the grid where runs stop on their own")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args()
    depth = args.depth

    cores, mhz, lanes, _ = machine()  # the same reading as bench_sweep.py (its kernel's bound)
    peak = cores * mhz * 1e6 * FP_PORTS * lanes
    chain_flops = flops_per_config_step(depth)
    chain_bound, shallow_bound = peak / chain_flops, peak / SHALLOW_FLOPS
    print(f"machine: {cores} cores (numba threads), {mhz:.0f} MHz (/proc/cpuinfo), {lanes} float64 lanes per vector, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} (other work disturbs "
          f"these numbers)")
    print(f"bounds: {cores} cores x {mhz / 1e3:.2f} GHz x {FP_PORTS} FP ports x {lanes} lanes = {peak:.3g} flop/s; "
          f"/ {chain_flops} flops per chain config-step (L = {depth}) = {chain_bound:.3g}, "
          f"/ {SHALLOW_FLOPS} per shallow config-step = {shallow_bound:.3g} config-steps/s\n")

    chain = chain_busy(depth)
    plain = plain_python_loop(depth)
    shallow = shallow_busy()
    rows = {
        f"chain engine (numba, L = {depth}, 2^17 runs x 2000 steps, all busy)": chain,
        f"plain Python loop, autograd, one chain at a time (L = {depth}, 8 runs x 300 steps)": plain,
        "shallow (U, V) engine (numba, 2^17 runs x 2000 steps, all busy)": shallow,
    }
    if not args.skip_grid:
        rate, size = chain_grid_rate(depth)
        rows[f"chain engine on a {int(np.sqrt(size))}^2 grid (L = {depth}, runs stop on their own)"] = rate
    width = max(map(len, rows))
    for label, rate in rows.items():
        print(f"{label:{width}s}  {rate:10.3g} config-steps/s")
    print(f"\nchain engine / plain loop     = {chain / plain:10.3g}x")
    print(f"chain engine / shallow engine = {chain / shallow:10.3g}x in config-steps/s, "
          f"{chain * chain_flops / (shallow * SHALLOW_FLOPS):.3g}x in flop/s")
    print(f"chain engine / bound          = {chain / chain_bound:10.1%}   (target >= 30%: "
          f"{'met' if chain >= 0.3 * chain_bound else 'NOT met'})")
    print(f"shallow engine / bound        = {shallow / shallow_bound:10.1%}")
    if not args.skip_gpu:
        gpu_section(depth)


if __name__ == "__main__":
    main()
