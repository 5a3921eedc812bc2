"""Gradient flow d(theta)/dt = -grad L(theta) for any model and loss, as torch.optim.Optimizer subclasses.

One step(closure) call is one accepted integration step, so Lightning counts it as one global step,
exactly like a GD step. The closure must zero the gradients, compute the loss and backpropagate (the
closure FullBatchModule builds does). Each integrator exposes the flow time reached, `t`, and the number
of closure calls, `grad_evals` (one full gradient each): the cost the benchmark compares.

Depends on torch only (runs use it through the process shallownet.processes.flows.GradientFlow, optim.method=flow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

# Dormand-Prince 5(4) tableau (Hairer, Norsett & Wanner, Solving ODEs I, table II.5.2).
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)  # 5th order; also row 7 of A
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)  # 5th minus 4th

# DP5 is unstable beyond h * sharpness ~ 3.3 (real axis). Near a minimum the error control alone lets
# the step grow to that edge and then hover there, with |eps| stuck at about the tolerance; keeping
# h * S below it makes every step contract, so the flow reaches any |eps| down to round-off.
STABLE_STEP = 3.0


class FlowIntegrator(torch.optim.Optimizer):
    """Shared machinery: all parameters as one flat vector, velocities -grad L through the closure.

    `t_stop` (None: no limit) clips the last step so that the flow lands exactly on it. A flow has no step
    size: its parameter groups carry no `lr` (shallownet.processes.flows.GradientFlow says what it is).
    """

    def __init__(self, params: Iterable[torch.Tensor], t_stop: float | None = None):
        super().__init__(params, {})
        self._params = [p for group in self.param_groups for p in group["params"]]
        self.t_stop = t_stop
        # the clock lives in the optimizer state (as in torch's LBFGS) so that checkpoints carry it
        self._clock.update(t=0.0, grad_evals=0)

    @property
    def _clock(self) -> dict:
        return self.state[self._params[0]]

    @property
    def t(self) -> float:
        """Flow time reached so far."""
        return self._clock["t"]

    @property
    def grad_evals(self) -> int:
        """Closure calls so far (one full gradient each)."""
        return self._clock["grad_evals"]

    def _clip(self, h: float) -> float:
        """h, or the time left to t_stop when that is shorter (or longer by a round-off sliver only)."""
        left = math.inf if self.t_stop is None else self.t_stop - self.t
        return left if left <= h * (1 + 1e-9) else h

    def _point(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _load(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def _velocity(self, closure: Callable[[], torch.Tensor], flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(-grad L, L) at the point `flat`; leaves the parameters there."""
        self._load(flat)
        with torch.enable_grad():
            loss = closure()
        self._clock["grad_evals"] += 1
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self._params]
        return -torch.cat([g.reshape(-1) for g in grads]), loss.detach()


class RungeKutta4(FlowIntegrator):
    """Classical fixed-step fourth-order Runge-Kutta: 4 gradients per step of length `step_size`."""

    def __init__(self, params: Iterable[torch.Tensor], step_size: float, t_stop: float | None = None):
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        super().__init__(params, t_stop)
        self.step_size = step_size

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Advance the flow by one step; returns the loss at the starting point."""
        h = self._clip(self.step_size)
        y = self._point()
        k1, loss = self._velocity(closure, y)
        k2, _ = self._velocity(closure, y + h / 2 * k1)
        k3, _ = self._velocity(closure, y + h / 2 * k2)
        k4, _ = self._velocity(closure, y + h * k3)
        # .grad keeps the last stage's gradient, not the new point's (DormandPrince's does match)
        self._load(y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
        self._clock["t"] += h
        return loss


class DormandPrince(FlowIntegrator):
    """Adaptive Dormand-Prince 5(4) with local error control: each step() takes one accepted step.

    A step is accepted when every coordinate's local error estimate is within atol + rtol * |theta_i|
    (max norm, not RMS: an RMS over a wide layer would hide one badly integrated unit, and the
    per-unit invariants Q_i of the flow need each coordinate accurate). The step size then follows
    the usual h * 0.9 err^(-1/5) rule, capped at `max_step` and at STABLE_STEP / S, with S the
    curvature along the step estimated from two stages (no extra gradient). The last stage is the gradient at the new
    point and is reused as the first stage of the next step (FSAL): 6 gradients per accepted step,
    and after a step the parameters' .grad is the gradient at the current point.
    """

    def __init__(self, params: Iterable[torch.Tensor], rtol: float = 1e-10, atol: float = 1e-12,
                 max_step: float = math.inf, first_step: float | None = None, t_stop: float | None = None):
        for name, value in (("rtol", rtol), ("atol", atol), ("max_step", max_step)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        super().__init__(params, t_stop)
        self.rtol, self.atol, self.max_step = rtol, atol, max_step
        self._clock.update(h=first_step, rejected=0)

    @property
    def step_size(self) -> float | None:
        """The step size the next step will try (None before the first step chooses one)."""
        return self._clock["h"]

    @property
    def rejected(self) -> int:
        """Trial steps rejected by the error control so far."""
        return self._clock["rejected"]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Advance the flow by one accepted step; returns the loss at the starting point."""
        clock = self._clock
        y = self._point()
        k1, loss = self._first_stage(closure, y)
        if clock["h"] is None:
            clock["h"] = self._initial_step(closure, y, k1)
        while True:
            h_try = min(clock["h"], self.max_step)
            h = self._clip(h_try)
            stages, point = [k1], y
            for row in _DP_A[1:]:
                point = y + h * _combine(row, stages)
                stages.append(self._velocity(closure, point)[0])
            y_new = y + h * _combine(_DP_B, stages)
            k7, loss_new = self._velocity(closure, y_new)
            error = h * _combine(_DP_E, [*stages, k7])
            err = float((error / (self.atol + self.rtol * torch.maximum(y.abs(), y_new.abs()))).abs().max())
            if err <= 1.0 or h < 1e-14 * max(1.0, abs(self.t)):  # an underflow means nan/inf: let it through
                break
            clock["rejected"] += 1
            clock["h"] = h * (max(0.2, 0.9 * err ** -0.2) if math.isfinite(err) else 0.2)
        # grow from h_try (not from a step clipped to t_stop), but stay inside the stability region
        grown = h_try * (min(5.0, max(0.2, 0.9 * err ** -0.2)) if err > 0 else 5.0)
        clock["h"] = min(grown, _stable_step(point, stages[-1], y_new, k7))
        clock.update(t=clock["t"] + h, fsal=(y_new, k7, loss_new))
        return loss

    def _first_stage(self, closure, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity at y: the previous step's last stage, unless the parameters were moved since."""
        cached = self._clock.get("fsal")
        if cached is not None and torch.equal(cached[0], y):
            return cached[1], cached[2]
        return self._velocity(closure, y)

    def _initial_step(self, closure, y: torch.Tensor, k1: torch.Tensor) -> float:
        """Hairer's starting step: from the sizes of y, f(y) and a difference estimate of f' (1 gradient)."""
        scale = self.atol + self.rtol * y.abs()
        d0, d1 = float((y / scale).abs().max()), float((k1 / scale).abs().max())
        h0 = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6
        k_probe, _ = self._velocity(closure, y + h0 * k1)
        self._load(y)
        d2 = float(((k_probe - k1) / scale).abs().max()) / h0
        h1 = (0.01 / max(d1, d2)) ** 0.2 if max(d1, d2) > 1e-15 else max(1e-6, h0 * 1e-3)
        return min(100 * h0, h1)


class DriftedDormandPrince(DormandPrince):
    """DormandPrince on d(theta)/dt = -(g + drift(g)), g = grad L: `drift` is called with the parameters at
    the point of g (the modified and central flows of shallownet.processes.flows add their terms so)."""

    def __init__(self, params: Iterable[torch.Tensor], drift: Callable[[torch.Tensor], torch.Tensor], **options):
        super().__init__(params, **options)
        self.drift = drift

    def _velocity(self, closure, flat):
        velocity, loss = super()._velocity(closure, flat)
        return velocity - self.drift(-velocity), loss


def _stable_step(y6: torch.Tensor, k6: torch.Tensor, y7: torch.Tensor, k7: torch.Tensor) -> float:
    """STABLE_STEP / S with S = |f(y7) - f(y6)| / |y7 - y6|, the curvature along the last step from two
    stages that share the time t + h (Hairer's stiffness estimate for DOPRI5); inf when it is unknown."""
    distance = float(torch.linalg.vector_norm(y7 - y6))
    sharpness = float(torch.linalg.vector_norm(k7 - k6)) / distance if distance > 0 else 0.0
    return STABLE_STEP / sharpness if sharpness > 0 else math.inf


def _combine(weights: tuple[float, ...], stages: list[torch.Tensor]) -> torch.Tensor:
    """sum_i w_i k_i over the stages with nonzero weight."""
    total = torch.zeros_like(stages[0])
    for w, k in zip(weights, stages, strict=True):
        if w:
            total.add_(k, alpha=w)
    return total
