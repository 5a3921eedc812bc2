"""Gradient flow on real nets through the adaptive Dormand-Prince 5(4) integrator: the step sizes it needs
and what they cost, on the digits CNN and a ReLU MLP against a tanh MLP (smooth) and a tanh CNN.

Every run starts from the same initialisation (model.seed 0) and integrates d(theta)/dt = -grad L to the
flow time T of its model, with shallownet.flow.DormandPrince at each of its rtols (MODELS), atol = rtol / 100
(the same integrator `optim.method=flow` runs inside Lightning; driven directly here so that every step's
size is seen). Data: the first --n-train digits (default 100, standardised as always; the full 1500 make
one CNN gradient ~20x dearer), ½ Σ-over-classes MSE, float64, one thread.

Per run: flow time reached (a run stops early when its integration time passes --max-seconds), accepted
and rejected steps, gradient evaluations (closure calls), the 10th percentile / median / largest accepted
step h; h·S at the start (median h of the first 10% of steps times the sharpness S(0)) and at the end
(last 10% times S at the end point); the share of steps whose next size was set by the integrator's
stability cap h <= 3/S_est (flow.STABLE_STEP; the rest by the error control); activation kinks crossed per
accepted step (ReLU sign changes plus max-pool argmax changes over all examples, between consecutive
accepted points: a lower bound); gradients per unit flow time and per GD-equivalent step (GD at the
stability limit eta = 2/S_max, S_max = max(S(0), S(T)), needs T·S_max/2 steps for the same time); the
integration's wall time; and the distance of the end point to the tightest run that reached T, relative
to its norm. S is the top Hessian eigenvalue by Lanczos (shallownet.curvature, tol 1e-6). For contrast,
on the same gradient budget as each Dormand-Prince run: the error of fixed-step RK4 (shallownet.flow.
RungeKutta4, grads / 4 steps of T / steps) and of forward Euler, i.e. plain GD with lr = T / grads.

    python benchmarks/bench_flow_real.py                       # about 30 minutes on one core
    python benchmarks/bench_flow_real.py --models mlp_relu mlp_tanh --max-seconds 60
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import shallownet.flow as flow_module
from shallownet import registry
from shallownet.config import RunConfig, load_config, validate_run
from shallownet.curvature import HessianOperator, top_eigenvalue
from shallownet.flow import DormandPrince, RungeKutta4
from shallownet.losses import LOSSES

# name: (label, overrides, flow time T, rtols; the last one that reaches T is the reference)
MODELS = {
    "mlp_relu": ("MLP 64-16-10 ReLU", ["model.kind=mlp", "model.widths=[16]", "model.activation=relu"], 1.0,
                 (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)),
    "mlp_tanh": ("MLP 64-16-10 tanh", ["model.kind=mlp", "model.widths=[16]", "model.activation=tanh"], 1.0,
                 (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10)),
    "cnn_relu": ("CNN 2x(conv 32 + pool) ReLU", ["model.kind=cnn"], 0.1, (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)),
    "cnn_tanh": ("CNN 2x(conv 32 + pool) tanh", ["model.kind=cnn", "model.activation=tanh"], 0.1,
                 (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)),
}


class Problem:
    """One model kind on the digits subset: a fresh model from the same init on demand."""

    def __init__(self, overrides: list[str], n_train: int):
        self.cfg = load_config(RunConfig, None, [*overrides, f"data.n_train={n_train}"])
        validate_run(self.cfg)
        self.kind = registry.model_kind(self.cfg.model.kind)
        self.data = registry.data_kind(self.cfg.data.kind).build(self.cfg, torch.float64)
        self.loss_fn = LOSSES[self.cfg.loss or self.kind.loss]

    def model(self) -> nn.Module:
        return self.kind.build(self.cfg, self.data)

    def sharpness(self, model: nn.Module) -> float:
        operator = HessianOperator(model, self.loss_fn, (self.data.x, self.data.y))
        value = top_eigenvalue(operator, tol=1e-6).value
        operator.release()
        return value


def kink_pattern(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Which side of every kink each example is on: ReLU inputs > 0, the argmax of each max-pool window."""
    patterns: list[torch.Tensor] = []

    def relu_hook(module, inputs, output):
        patterns.append(inputs[0] > 0)

    def pool_hook(module, inputs, output):
        patterns.append(F.max_pool2d(inputs[0], module.kernel_size, module.stride, module.padding,
                                     return_indices=True)[1])

    hooks = [m.register_forward_hook(relu_hook) for m in model.modules() if isinstance(m, nn.ReLU | nn.LeakyReLU)]
    hooks += [m.register_forward_hook(pool_hook) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return patterns


def integrate(problem: Problem, rtol: float, t_end: float, max_seconds: float) -> dict:
    """One Dormand-Prince run from the init to t_end (or until max_seconds of integration)."""
    model = problem.model()
    x, y = problem.data.x, problem.data.y
    flow = DormandPrince(model.parameters(), rtol=rtol, atol=rtol / 100, t_stop=t_end)

    def closure():
        flow.zero_grad()
        loss = problem.loss_fn(model(x), y)
        loss.backward()
        return loss

    caps: list[float] = []  # the stability cap each step computed (flow.py's own function, recorded)
    original = flow_module._stable_step

    def recording(*args):
        caps.append(original(*args))
        return caps[-1]

    steps, capped, kinks, wall = [], 0, 0, 0.0
    pattern = kink_pattern(model, x)
    flow_module._stable_step = recording
    try:
        while flow.t < t_end and wall < max_seconds:
            before = flow.t
            start = time.perf_counter()
            flow.step(closure)
            wall += time.perf_counter() - start
            steps.append(flow.t - before)
            capped += flow.step_size == caps[-1]
            new = kink_pattern(model, x)
            kinks += sum(int((a != b).sum()) for a, b in zip(pattern, new, strict=True))
            pattern = new
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                break
    finally:
        flow_module._stable_step = original
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    done = flow.t >= t_end * (1 - 1e-12)
    return dict(rtol=rtol, t=flow.t, done=done, h=np.array(steps), rejected=flow.rejected,
                grads=flow.grad_evals, capped=capped, kinks=kinks, wall=wall, theta=theta,
                s_end=problem.sharpness(model) if done else math.nan)


def distance(theta: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(theta - reference) / torch.linalg.vector_norm(reference))


def fixed_step(problem: Problem, method: str, steps: int, t_end: float) -> torch.Tensor:
    """The end point of `steps` fixed steps of T / steps: RK4 (4 gradients each) or Euler (= GD, 1 each)."""
    model = problem.model()
    x, y = problem.data.x, problem.data.y
    params = list(model.parameters())
    if method == "rk4":
        flow = RungeKutta4(params, step_size=t_end / steps, t_stop=t_end)

        def closure():
            flow.zero_grad()
            loss = problem.loss_fn(model(x), y)
            loss.backward()
            return loss

        while flow.t < t_end * (1 - 1e-12):
            flow.step(closure)
    else:
        for _ in range(steps):
            grads = torch.autograd.grad(problem.loss_fn(model(x), y), params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.sub_(t_end / steps * g)
    return torch.cat([p.detach().reshape(-1) for p in params])


def table(name: str, problem: Problem, t_end: float, rtols, max_seconds: float) -> None:
    label = MODELS[name][0]
    init = problem.model()
    s0 = problem.sharpness(init)
    n_params = sum(p.numel() for p in init.parameters())
    runs = [integrate(problem, rtol, t_end, max_seconds) for rtol in rtols]
    done = [r for r in runs if r["done"]]
    reference = done[-1] if done else None
    s_max = max([s0] + [r["s_end"] for r in done])
    gd_steps = t_end * s_max / 2
    print(f"\n{label}: {n_params} parameters, {len(problem.data.x)} digits, T = {t_end:g}; S(0) = {s0:.3f}, "
          f"S(T) = {reference['s_end'] if reference else math.nan:.3f}, 2/S_max = {2 / s_max:.4f}: "
          f"GD at 2/S_max covers T in {gd_steps:.1f} steps")
    header = (f"{'rtol':>6s} {'t':>6s} {'acc':>6s} {'rej':>6s} {'grads':>7s} | {'h p10':>8s} {'h med':>8s} "
              f"{'h max':>8s} {'hS 0':>6s} {'hS T':>6s} {'capped':>6s} {'kinks/st':>8s} | {'grads/t':>8s} "
              f"{'grads/GD':>8s} {'wall s':>7s} | {'rel err':>8s} {'RK4 err':>8s} {'Euler':>8s}")
    print(header)
    print("-" * len(header))
    for r in runs:
        h = r["h"]
        tenth = max(1, len(h) // 10)
        hs0 = float(np.median(h[:tenth])) * s0
        hs_t = float(np.median(h[-tenth:])) * r["s_end"]
        per_t = r["grads"] / r["t"]
        error = rk4 = euler = "-"
        if r is reference:
            error = "ref"
        elif r["done"] and reference is not None:
            error = f"{distance(r['theta'], reference['theta']):8.1e}"
            rk4 = f"{distance(fixed_step(problem, 'rk4', max(1, r['grads'] // 4), t_end), reference['theta']):8.1e}"
            euler = f"{distance(fixed_step(problem, 'euler', r['grads'], t_end), reference['theta']):8.1e}"
        print(f"{r['rtol']:6.0e} {r['t']:6.3g} {len(h):6d} {r['rejected']:6d} {r['grads']:7d} | "
              f"{np.percentile(h, 10):8.2e} {np.median(h):8.2e} {h.max():8.2e} {hs0:6.3f} {hs_t:6.3f} "
              f"{r['capped'] / len(h):6.0%} {r['kinks'] / len(h):8.2f} | {per_t:8.0f} {per_t * 2 / s_max:8.1f} "
              f"{r['wall']:7.1f} | {error:>8s} {rk4:>8s} {euler:>8s}")
    if len(done) >= 3:  # power laws over the runs that reached T (errors: all but the reference)
        log_rtol = np.log10([r["rtol"] for r in done])
        h_slope = np.polyfit(log_rtol, np.log10([np.median(r["h"]) for r in done]), 1)[0]
        cost_slope = np.polyfit(log_rtol, np.log10([r["grads"] for r in done]), 1)[0]
        errors = [distance(r["theta"], reference["theta"]) for r in done[:-1]]
        error_slope = np.polyfit(log_rtol[:-1], np.log10(errors), 1)[0]
        print(f"fits over rtol {done[0]['rtol']:g}..{done[-1]['rtol']:g}: median h ~ rtol^{h_slope:.2f}, "
              f"grads ~ rtol^{cost_slope:.2f}, rel err ~ rtol^{error_slope:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--n-train", type=int, default=100, help="first n digits (default 100)")
    parser.add_argument("--max-seconds", type=float, default=450.0,
                        help="integration time allowed to one run before it stops short of T (default 450)")
    parser.add_argument("--rtols", type=float, nargs="+", default=None, help="instead of each model's own")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print("gradient flow by Dormand-Prince 5(4), atol = rtol / 100, float64, 1 thread; "
          "h = accepted step, S = top Hessian eigenvalue, grads = gradient evaluations")
    for name in args.models:
        _, overrides, t_end, rtols = MODELS[name]
        table(name, Problem(overrides, args.n_train), t_end, args.rtols or rtols, args.max_seconds)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
