"""TheoryMonitor: logs what theory.md predicts along a GD run of the shallow net, next to what happened."""

from __future__ import annotations

import lightning as L
import numpy as np

from shallownet import theory
from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.processes.base import GD_IDENTITIES, process_of


class TheoryMonitor(PeriodicMonitor):
    """Observes every GD step and logs, at PeriodicMonitor's cadence, the public tags

        theory/gf_solution_sharpness   sqrt(4 phi^2 + Qn_t^2): the sharpness of the minimum gradient flow
                                       would reach from the current point
        theory/imbalance_factor        P so far: prod over the steps taken of (1 - eta^2 eps_t^2), from the
                                       measured eps_t (by theory, Q_i(t) / Q_i(0) for every unit i)
        theory/pred_residual, theory/pred_norm, theory/pred_imbalance
                                       eps, lam and Q predicted for this step by the exact one-step
                                       recursions (theory.gd_step) from the state one step before
        theory/pred_error_residual, theory/pred_error_norm
                                       |predicted - measured| for eps and lam
        theory/pred_error_imbalance    max over units i of |predicted Q_i - measured Q_i|

    It needs a process with GD's one-step identities (its step size eta is the process's lr) and the shallow
    net: `model.phi` and `model.quantities()` with residual, norm, imbalance_norm and imbalance_per_unit
    (ScalarLinearNet). `factor` holds P after the run. Its state is kept in checkpoints.
    """

    def __init__(self, every_n_steps: int = 1):
        super().__init__(every_n_steps)
        self.factor = 1.0
        self._values: dict[str, float] = {}
        self._previous: dict | None = None

    def refusal(self, pl_module, process) -> str | None:
        if process.identities != GD_IDENTITIES:
            return f"it predicts GD steps, and the process {process.method} does not take them"
        model = getattr(pl_module, "model", None)
        known = getattr(model, "quantities", None)
        needed = {"residual", "norm", "imbalance_norm", "imbalance_per_unit"}
        if getattr(model, "phi", None) is None or not callable(known) or not needed <= set(known()):
            return "it needs the shallow net (a model with phi and the quantities residual, norm, imbalance_norm " \
                   "and imbalance_per_unit)"
        return None

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is None:  # a resumed run continues from its checkpointed state
            self.factor = 1.0
            self._observe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._previous["step"]:  # the batch that only judged the state took no step
            self._observe(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        return {f"theory/{name}": float(value) for name, value in self._values.items()}

    def extra_state(self) -> dict:
        previous = self._previous and {**self._previous, "per_unit": self._previous["per_unit"].tolist()}
        return {"factor": self.factor, "values": self._values, "previous": previous}

    def load_extra_state(self, state: dict) -> None:
        self.factor, self._values, previous = state["factor"], state["values"], state["previous"]
        self._previous = None if previous is None else {**previous, "per_unit": np.array(previous["per_unit"])}

    def _observe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        eta, phi = process_of(trainer, pl_module).lr, pl_module.model.phi
        known = pl_module.model.quantities()
        current = {name: float(known[name]) for name in ("residual", "norm", "imbalance_norm")}
        current["step"] = trainer.global_step
        current["per_unit"] = known["imbalance_per_unit"].double().cpu().numpy()
        values = {"gf_solution_sharpness": float(theory.gf_solution_sharpness(current["imbalance_norm"], phi))}
        previous = self._previous
        if previous is not None:
            eps, lam, per_unit = theory.gd_step(previous["residual"], previous["norm"], previous["per_unit"], eta, phi)
            self.factor *= theory.imbalance_factor_step(previous["residual"], eta)
            values.update(
                pred_residual=eps, pred_norm=lam, pred_imbalance=float(per_unit.sum()),
                pred_error_residual=abs(eps - current["residual"]),
                pred_error_norm=abs(lam - current["norm"]),
                pred_error_imbalance=float(np.max(np.abs(per_unit - current["per_unit"]))),
            )
        values["imbalance_factor"] = self.factor
        self._previous = current
        self._values = values
