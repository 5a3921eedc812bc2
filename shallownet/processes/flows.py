"""Gradient flow as a process: d(theta)/dt = -grad L, integrated by adaptive Dormand-Prince 5(4).

The paper's foil: it conserves every layer imbalance, has no step size and so no stability threshold. One
step is one accepted integration step; its clock is the flow time the integrator has reached.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from shallownet.processes.base import FLOW_IDENTITIES, Process

if TYPE_CHECKING:
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
        from shallownet.flow import DormandPrince

        h = self.hyperparameters
        return DormandPrince(params, rtol=h["rtol"], atol=h["atol"], max_step=h["max_step"] or math.inf,
                             t_stop=max_time if math.isfinite(max_time) else None)

    def time_per_step(self) -> None:
        return None

    def time(self, steps: int) -> float:
        return self.optimizer.t

    def work(self, steps: int) -> dict:
        return {"grad_evals": self.optimizer.grad_evals, "rejected": self.optimizer.rejected}
