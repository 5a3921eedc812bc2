"""The flows as processes, each integrated by adaptive Dormand-Prince 5(4) (shallownet.flow.DormandPrince).

    flow           d(theta)/dt = -grad L                                 gradient flow, the paper's foil
    modified_flow  d(theta)/dt = -grad (L + (eta/4) |grad L|^2)          Barrett & Dherin (ICLR 2021)

One step is one accepted integration step; the clock is the flow time reached. The flows that model GD at a
step size eta (key lr) run on GD's clock t = eta k, the x-axis compare shares: in GD steps s = t / eta the
modified flow is the paper's d(theta)/ds = -eta grad(L + (eta/4) |grad L|^2). Gradient flow conserves every
layer imbalance and has no step size, so no stability threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from shallownet.processes.base import FLOW_IDENTITIES, Process

if TYPE_CHECKING:
    import torch

    from shallownet.flow import FlowIntegrator


class GradientFlow(Process):
    method = "flow"
    identities = FLOW_IDENTITIES
    integrates = True

    def __init__(self, rtol: float, atol: float, max_step: float | None = None):
        super().__init__(rtol=rtol, atol=atol, max_step=max_step)

    @classmethod
    def viewing(cls, integrator: FlowIntegrator) -> GradientFlow:
        """The process an existing integrator (any FlowIntegrator) carries out."""
        view = cls(rtol=getattr(integrator, "rtol", math.nan), atol=getattr(integrator, "atol", math.nan),
                   max_step=getattr(integrator, "max_step", None))
        view.optimizer = integrator
        return view

    def _optimizer(self, params, max_time):
        return self._integrator(params, max_time)

    def _integrator(self, params, max_time, drift: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Dormand-Prince on d(theta)/dt = -(g + drift(g)), g = grad L (drift None: gradient flow)."""
        from shallownet.flow import DormandPrince, DriftedDormandPrince

        h = self.hyperparameters
        options = dict(rtol=h["rtol"], atol=h["atol"], max_step=h["max_step"] or math.inf,
                       t_stop=max_time if math.isfinite(max_time) else None)
        return DormandPrince(params, **options) if drift is None else DriftedDormandPrince(params, drift, **options)

    def time_per_step(self) -> None:
        return None

    def time(self, steps: int) -> float:
        return self.optimizer.t

    def work(self, steps: int) -> dict:
        return {"grad_evals": self.optimizer.grad_evals, "rejected": self.optimizer.rejected}


class ModifiedFlow(GradientFlow):
    """The modified equation of GD at step size lr to first order in lr: d(theta)/dt = -(g + (lr/2) H g).

    Each velocity is one gradient and one Hessian-vector product (double backward). On the shallow net it
    shrinks every imbalance Q_i at dQ_i/dt = -lr eps^2 Q_i (theory.md section 9), the first order of GD's
    factor 1 - lr^2 eps^2 per step; gradient flow keeps Q_i."""

    method = "modified_flow"
    identities = None
    needs_curvature = True

    def __init__(self, lr: float, rtol: float, atol: float, max_step: float | None = None):
        Process.__init__(self, lr=lr, rtol=rtol, atol=atol, max_step=max_step)
        self._operator = None

    def operator(self):
        """The run's HessianOperator, made at first use (when the data is in place)."""
        if self._operator is None:
            self._operator = self.curvature()
        return self._operator

    def _optimizer(self, params, max_time):
        return self._integrator(params, max_time, drift=lambda g: 0.5 * self.lr * self.operator()(g))

    def threshold(self) -> float:
        """2 / lr: the threshold of the GD it models."""
        return 2.0 / self.lr

    def work(self, steps: int) -> dict:
        return {**super().work(steps), "hvps": self.optimizer.grad_evals}

