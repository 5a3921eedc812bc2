"""Curvature on CUDA: HVP cost against a gradient, a cold top-eigenvalue solve, and agreement with the CPU.

The digits MLP of bench_curvature.py (64-256-256-10, tanh, full batch of 1797), at its initialisation,
in float64 and float32, on the GPU; the CPU float64 solve is the reference value.

    python benchmarks/bench_curvature_gpu.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from extensions.mlp import load_digits, mlp
from shallownet.curvature import HessianOperator, top_eigenvalue


def timed_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of fn(), synchronising the GPU around each call."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def hvp_costs_ms(fwd_rev: HessianOperator, dbl_bwd: HessianOperator, v: torch.Tensor) -> list[float]:
    """Forward-over-reverse; double backward building its graph (first HVP at a point); graph kept."""
    return [timed_ms(lambda: fwd_rev(v)),
            timed_ms(lambda: (dbl_bwd.release(), dbl_bwd(v))),
            timed_ms(lambda: dbl_bwd(v))]


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench_curvature_gpu.py: needs a CUDA device (torch.cuda.is_available() is False)")
    x, y = load_digits()
    cpu_model = mlp([64, 256, 256, 10], "tanh", seed=0)
    reference = top_eigenvalue(HessianOperator(cpu_model, F.cross_entropy, (x, y)), tol=1e-10).value
    print(f"{torch.cuda.get_device_name(0)}; CPU float64 reference sharpness {reference:.12g}")
    print(f"{'dtype':8s} {'gradient':>10s} {'HVP fwd-rev':>12s} {'HVP dbl-bwd':>12s} {'graph kept':>11s} "
          f"{'solve HVPs':>10s} {'solve ms':>9s} {'rel. diff vs CPU':>16s}")
    for dtype in (torch.float64, torch.float32):
        model = copy.deepcopy(cpu_model).to("cuda", dtype)
        data = (x.to("cuda", dtype), y.to("cuda"))
        fwd_rev = HessianOperator(model, F.cross_entropy, data, method="forward-over-reverse")
        dbl_bwd = HessianOperator(model, F.cross_entropy, data)  # the default: double backward
        v = torch.randn(dbl_bwd.dim, device="cuda", dtype=dtype)
        grad_ms = timed_ms(dbl_bwd.gradient)
        ratios = [ms / grad_ms for ms in hvp_costs_ms(fwd_rev, dbl_bwd, v)]
        dbl_bwd.release()
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = top_eigenvalue(dbl_bwd, tol=1e-6 if dtype == torch.float64 else 1e-4)
        torch.cuda.synchronize()
        solve_ms = 1e3 * (time.perf_counter() - start)
        name = str(dtype).removeprefix("torch.")
        print(f"{name:8s} {grad_ms:8.2f}ms {ratios[0]:11.2f}x {ratios[1]:11.2f}x {ratios[2]:10.2f}x "
              f"{result.n_hvp:10d} {solve_ms:9.1f} {abs(result.value / reference - 1):16.1e}")

if __name__ == "__main__":
    main()
