"""Curvature on CUDA: HVP cost against a gradient, a cold top-eigenvalue solve, and agreement with the CPU.

The digits MLP of bench_curvature.py (64-256-256-10, tanh, full batch of 1797), at its initialisation,
in float64 and float32, on the GPU; the CPU float64 solve is the reference value.

    python benchmarks/bench_curvature_gpu.py
"""

from __future__ import annotations

import copy
import statistics
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


def main() -> None:
    x, y = load_digits()
    cpu_model = mlp([64, 256, 256, 10], "tanh", seed=0)
    reference = top_eigenvalue(HessianOperator(cpu_model, F.cross_entropy, (x, y)), tol=1e-10).value
    print(f"{torch.cuda.get_device_name(0)}; CPU float64 reference sharpness {reference:.12g}")
    print(f"{'dtype':8s} {'gradient':>10s} {'HVP fwd-rev':>12s} {'HVP dbl-bwd':>12s} {'solve HVPs':>10s} "
          f"{'solve ms':>9s} {'rel. diff vs CPU':>16s}")
    for dtype in (torch.float64, torch.float32):
        model = copy.deepcopy(cpu_model).to("cuda", dtype)
        data = (x.to("cuda", dtype), y.to("cuda"))
        ops = {m: HessianOperator(model, F.cross_entropy, data, method=m)
               for m in ("forward-over-reverse", "double-backward")}
        v = torch.randn(ops["double-backward"].dim, device="cuda", dtype=dtype)
        grad_ms = timed_ms(ops["double-backward"].gradient)
        hvp_ms = {m: timed_ms(lambda op=op: op(v)) for m, op in ops.items()}
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = top_eigenvalue(ops["forward-over-reverse"], tol=1e-6 if dtype == torch.float64 else 1e-4)
        torch.cuda.synchronize()
        solve_ms = 1e3 * (time.perf_counter() - start)
        print(f"{str(dtype).removeprefix('torch.'):8s} {grad_ms:8.2f}ms {hvp_ms['forward-over-reverse'] / grad_ms:11.2f}x "
              f"{hvp_ms['double-backward'] / grad_ms:11.2f}x {result.n_hvp:10d} {solve_ms:9.1f} "
              f"{abs(result.value / reference - 1):16.1e}")


if __name__ == "__main__":
    main()
