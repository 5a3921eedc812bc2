"""TheoryMonitor: logs what theory.md predicts along a GD run of the shallow net, next to what happened."""

from __future__ import annotations

import lightning as L
import numpy as np

from shallownet import theory
from shallownet.callbacks.logging import log_values
from shallownet.callbacks.tensorboard import log_step


class TheoryMonitor(L.Callback):
    """After every GD step, logs the public tags

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

    The step size is the optimizer's `lr` (GD); the module's model must be a shallow net: `model.phi` and
    `model.quantities()` with residual, norm, imbalance_norm and imbalance_per_unit (ScalarLinearNet).
    `factor` holds P after the run; `last` the last values logged. Its state is kept in checkpoints.
    """

    def __init__(self):
        self.eta = float("nan")
        self.factor = 1.0
        self.last: dict[str, float] = {}
        self._previous: dict | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.eta = float(trainer.optimizers[0].param_groups[0].get("lr", 0.0))
        if not self.eta > 0:  # gradient-flow integrators report lr = 0
            raise ValueError("TheoryMonitor predicts GD steps: the optimizer needs a step size lr > 0")
        if self._previous is None:  # a resumed run continues from its checkpointed state
            self.factor = 1.0
            self._observe(trainer, pl_module)

    def state_dict(self) -> dict:
        previous = self._previous and {**self._previous, "per_unit": self._previous["per_unit"].tolist()}
        return {"factor": self.factor, "last": self.last, "previous": previous}

    def load_state_dict(self, state_dict: dict) -> None:
        self.factor, self.last, previous = state_dict["factor"], state_dict["last"], state_dict["previous"]
        self._previous = None if previous is None else {**previous, "per_unit": np.array(previous["per_unit"])}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._previous["step"]:  # the batch that only judged the state took no step
            self._observe(trainer, pl_module)

    def _observe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phi = pl_module.model.phi
        known = pl_module.model.quantities()
        current = {name: float(known[name]) for name in ("residual", "norm", "imbalance_norm")}
        current["step"] = trainer.global_step
        current["per_unit"] = known["imbalance_per_unit"].double().cpu().numpy()
        values = {"gf_solution_sharpness": float(theory.gf_solution_sharpness(current["imbalance_norm"], phi))}
        previous = self._previous
        if previous is not None:
            eps, lam, per_unit = theory.gd_step(previous["residual"], previous["norm"], previous["per_unit"],
                                                self.eta, phi)
            self.factor *= theory.imbalance_factor_step(previous["residual"], self.eta)
            values.update(
                pred_residual=eps, pred_norm=lam, pred_imbalance=float(per_unit.sum()),
                pred_error_residual=abs(eps - current["residual"]),
                pred_error_norm=abs(lam - current["norm"]),
                pred_error_imbalance=float(np.max(np.abs(per_unit - current["per_unit"]))),
            )
        values["imbalance_factor"] = self.factor
        self._previous = current
        self.last = values
        log_values(trainer, {f"theory/{name}": float(value) for name, value in values.items()},
                   log_step(trainer, pl_module))
