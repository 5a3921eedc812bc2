"""Gradient flow inside the same Lightning machinery as GD: same fit(), same monitors, same tags.

The flow's optimizer is a shallownet.flow integrator (one accepted ODE step per global step). Its
TensorBoard x-axis is the flow time in units of a GD step size: step = round(t / time_unit), so a GF
curve overlays GD with step size time_unit at t = eta * k.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig

from shallownet.flow import DormandPrince, FlowIntegrator
from shallownet.module import ShallowNetModule

MAX_TIME = "max_time"


class FlowTimeMixin:
    """For any FullBatchModule whose optimizer is a FlowIntegrator: time-aligned logging and a time budget.

    Put it first in the bases (`class MyFlow(FlowTimeMixin, FullBatchModule)`); it adds two keyword
    arguments: `time_unit` (the GD step size to align with) and `max_time` (the flow stops there with
    outcome "max_time", unless it converged or diverged first).
    """

    def __init__(self, *args, time_unit: float, max_time: float, **kwargs):
        super().__init__(*args, **kwargs)
        if not (time_unit > 0 and max_time > 0):
            raise ValueError(f"time_unit and max_time must be > 0, got {time_unit} and {max_time}")
        self.time_unit, self.max_time = time_unit, max_time
        self.flow: FlowIntegrator | None = None

    def configure_optimizers(self):
        self.flow = super().configure_optimizers()
        if not isinstance(self.flow, FlowIntegrator):
            raise TypeError(f"gradient flow needs a FlowIntegrator optimizer, got {type(self.flow).__name__}")
        self.flow.t_stop = self.max_time  # land exactly on the budget rather than overshoot it
        return self.flow

    @property
    def flow_time(self) -> float:
        return 0.0 if self.flow is None else self.flow.t

    def aligned_step(self) -> int:
        """The TensorBoard step of the current state: flow time in units of the GD step size."""
        return round(self.flow_time / self.time_unit)

    def judge(self) -> str | None:
        verdict = super().judge()
        if verdict is None and self.flow_time >= self.max_time:
            return MAX_TIME
        return verdict


class GradientFlowModule(FlowTimeMixin, ShallowNetModule):
    """Gradient flow on the shallow net: converged when |eps| <= tol, "max_time" at the time budget."""


def fit_flow(cfg: DictConfig, log_dir: Path, rtol: float, atol: float, max_time: float, time_unit: float,
             extra_callbacks=()) -> dict:
    """Run gradient flow with shallownet.training.fit (cfg as for GD; cfg.optim.lr is not used).

    Returns fit's summary with `time` (flow time reached), `grad_evals`, `rejected` (error-control
    rejections) added and `eta` set to None; `steps` counts accepted ODE steps.
    """
    from shallownet.training import fit  # training imports the curvature monitors: only when running

    integrators: list[DormandPrince] = []

    def make_flow(params):
        integrators.append(DormandPrince(params, rtol=rtol, atol=atol))
        return integrators[-1]

    module_cls = functools.partial(GradientFlowModule, time_unit=time_unit, max_time=max_time)
    summary = fit(cfg, log_dir, make_optimizer=make_flow, extra_callbacks=extra_callbacks, module_cls=module_cls)
    flow = integrators[-1]
    summary.update(eta=None, time=flow.t, grad_evals=flow.grad_evals, rejected=flow.rejected)
    return summary
