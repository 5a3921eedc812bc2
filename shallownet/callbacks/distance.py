"""compare's distance of a flow to GD: |theta_flow(t) - theta_GD(t)| on GD's clock t = eta k.

    trajectory = GDTrajectory()                 # on the GD sub-run: theta_k after every step k (CPU copies)
    distance = DistanceToGD(trajectory, eta)    # on a flow sub-run: lands the flow on every t = eta k and logs
                                                # compare/distance_to_gd there, at GD's x-axis step

A flow takes steps of its own length, so the distance is only defined where the flow is at a GD time: before
each step DistanceToGD moves the integrator's t_stop to the next multiple of eta (the integrator clips its step
to land there exactly; the run's own time budget still bounds it), so the flow takes at least one step per GD
step and no interpolation error enters the distance.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from shallownet.callbacks.logging import log_values
from shallownet.callbacks.tensorboard import log_step

DISTANCE = "compare/distance_to_gd"


def _flat(pl_module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in pl_module.model.parameters()]).to("cpu", torch.float64)


class GDTrajectory(L.Callback):
    """theta_k of a GD sub-run at every step k, from theta_0."""

    def __init__(self):
        self.points: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.points = [_flat(pl_module)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == len(self.points):
            self.points.append(_flat(pl_module))


class DistanceToGD(L.Callback):
    """Logs compare/distance_to_gd each time the flow is at t = eta k with theta_k in `trajectory`; keeps the
    last and largest value (summary.json's distance_to_gd_end, distance_to_gd_max)."""

    def __init__(self, trajectory: GDTrajectory, eta: float):
        self.trajectory, self.eta = trajectory, eta
        self.last: float | None = None
        self.largest: float | None = None
        self._max_time = math.inf
        self._measured_k = -1  # the last GD step measured at (a round-off sliver of a step can land on it twice)

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = pl_module.process.optimizer
        self._max_time = math.inf if optimizer.t_stop is None else optimizer.t_stop
        self._measure(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = pl_module.process.optimizer
        next_k = math.floor(optimizer.t / self.eta * (1 + 1e-12) + 1e-9) + 1
        optimizer.t_stop = min(self._max_time, next_k * self.eta)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._measure(trainer, pl_module)

    def _measure(self, trainer, pl_module) -> None:
        t = pl_module.process.optimizer.t
        k = round(t / self.eta)
        if abs(t - k * self.eta) > 1e-9 * max(1.0, abs(t)) or k >= len(self.trajectory.points) or k == self._measured_k:
            return
        self._measured_k = k
        value = float(torch.linalg.vector_norm(_flat(pl_module) - self.trajectory.points[k]))
        self.last = value
        self.largest = value if self.largest is None else max(self.largest, value)
        log_values(trainer, {DISTANCE: value}, log_step(trainer, pl_module))
