"""Gradient evaluations of the adaptive Dormand-Prince 5(4) flow against fixed-step RK4, at equal accuracy.

Accuracy is the distance of the end point to the closed-form gradient-flow limit (theory.gf_limit), both
integrators run to the same time T (the reference flow has |eps| < 1e-13 by then). For each target,
DP5(4) takes the loosest rtol on a grid of ratio 10^(1/4) (atol = rtol / 100) that reaches it; RK4 the
fewest steps that reach it (from a pilot run and its h^4 error law, then refined by 5% steps). The
"small init" problem starts next to the saddle at 0: a slow escape, then a fast convergence.

    python benchmarks/bench_flow.py
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from shallownet import theory
from shallownet.flow import DormandPrince, RungeKutta4
from shallownet.model import ScalarLinearNet, initial_vectors

PHI = 1.0
TARGETS = (1e-6, 1e-8, 1e-10)
PROBLEMS = {  # name: initial_vectors arguments
    "width 10, imbalanced (compare.yaml)": dict(width=10, scheme="imbalanced", scale=1.5, imbalance=0.8),
    "width 100, gaussian": dict(width=100, scheme="gaussian", scale=1.0),
    "width 10, small init (saddle escape)": dict(width=10, scheme="gaussian", scale=0.05),
}


def integrate(a0, b0, make, t_end: float) -> tuple[float, int]:
    """(distance of the state at t_end to the GF limit, gradient evaluations)."""
    net = ScalarLinearNet(a0.clone(), b0.clone())
    flow = make(net.parameters())
    flow.t_stop = t_end

    def closure():
        flow.zero_grad()
        loss = 0.5 * (net.product() - PHI) ** 2
        loss.backward()
        return loss

    while flow.t < t_end:
        flow.step(closure)
        if not torch.isfinite(net.a).all():  # RK4 beyond its stability limit
            return math.inf, flow.grad_evals
    a_gf, b_gf = theory.gf_limit(a0.numpy(), b0.numpy(), PHI)
    error = max(np.abs(net.a.detach().numpy() - a_gf).max(), np.abs(net.b.detach().numpy() - b_gf).max())
    return float(error), flow.grad_evals


def end_time(a0, b0) -> float:
    """When a tight reference flow has |eps| < 1e-13 (all runs integrate to this time)."""
    net = ScalarLinearNet(a0.clone(), b0.clone())
    flow = DormandPrince(net.parameters(), rtol=1e-13, atol=1e-15)

    def closure():
        flow.zero_grad()
        loss = 0.5 * (net.product() - PHI) ** 2
        loss.backward()
        return loss

    while abs(float(net.product().detach()) - PHI) >= 1e-13:
        flow.step(closure)
    return flow.t


def cheapest_dp(a0, b0, t_end: float, target: float) -> tuple[float, float, int]:
    for rtol in 10.0 ** -np.arange(4, 14.01, 0.25):
        error, evals = integrate(a0, b0, lambda p, r=rtol: DormandPrince(p, rtol=r, atol=r / 100), t_end)
        if error <= target:
            return rtol, error, evals
    raise RuntimeError(f"DP5(4) did not reach {target:g}")


def cheapest_rk4(a0, b0, t_end: float, target: float, pilot_steps: int) -> tuple[int, float, int]:
    def run(steps: int):
        return integrate(a0, b0, lambda p: RungeKutta4(p, step_size=t_end / steps), t_end)

    error, _ = run(pilot_steps)
    steps = max(1, math.ceil(pilot_steps * (error / target) ** 0.25)) if math.isfinite(error) else 2 * pilot_steps
    error, evals = run(steps)
    while error > target:  # grow until the target is met ...
        steps = math.ceil(steps * 1.05)
        error, evals = run(steps)
    while steps > 1:  # ... then shrink while it still is
        fewer = math.floor(steps / 1.05)
        fewer_error, fewer_evals = run(fewer)
        if fewer_error > target:
            break
        steps, error, evals = fewer, fewer_error, fewer_evals
    return steps, error, evals


def main() -> None:
    header = (f"{'problem':38s} {'lam_GF':>7s} {'T':>6s} {'target':>7s} | {'DP rtol':>7s} {'DP grads':>8s} "
              f"{'DP error':>8s} | {'RK4 steps':>9s} {'RK4 grads':>9s} {'RK4 error':>9s} | {'RK4/DP':>6s}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for name, kwargs in PROBLEMS.items():
        a0, b0 = initial_vectors(seed=0, **kwargs)
        qn0 = float(torch.linalg.vector_norm(a0 + b0) * torch.linalg.vector_norm(a0 - b0))
        lam_gf = float(theory.gf_solution_sharpness(qn0, PHI))
        t_end = end_time(a0, b0)
        for target in TARGETS:
            rtol, dp_error, dp_evals = cheapest_dp(a0, b0, t_end, target)
            # RK4 pilot: about as many steps as DP5(4) took
            steps, rk_error, rk_evals = cheapest_rk4(a0, b0, t_end, target, pilot_steps=max(4, dp_evals // 6))
            print(f"{name:38s} {lam_gf:7.3f} {t_end:6.2f} {target:7.0e} | {rtol:7.1e} {dp_evals:8d} {dp_error:8.1e} | "
                  f"{steps:9d} {rk_evals:9d} {rk_error:9.1e} | {rk_evals / dp_evals:6.2f}")
    print(f"\n({time.perf_counter() - start:.1f} s; grads = full gradient evaluations = closure calls)")


if __name__ == "__main__":
    main()
