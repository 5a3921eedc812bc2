"""TheoryMonitor: logs what theory.md predicts along a GD run of the shallow net, next to what happened."""

from __future__ import annotations

import lightning as L
import numpy as np

from shallownet import quantities, theory
from shallownet.callbacks.tensorboard import find_writer, log_step


class TheoryMonitor(L.Callback):
    """After every GD step, logs the public tags (double precision)

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

    The step size is the optimizer's `lr` (GD), phi is `pl_module.phi`; the module needs `model.a`,
    `model.b` (ShallowNetModule has them). `factor` holds P after the run; `last` the last values logged.
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
        self.factor = 1.0
        self._previous = None
        self._observe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._previous["step"]:  # the batch that only judged the state took no step
            self._observe(trainer, pl_module)

    def _observe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phi = pl_module.phi
        a, b = pl_module.model.a.detach(), pl_module.model.b.detach()
        current = quantities.shallow_state(a, b, phi)
        current["step"] = trainer.global_step
        current["per_unit"] = quantities.imbalance_per_unit(a, b).double().cpu().numpy()
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
        writer = find_writer(trainer)
        if writer is None:
            return
        step = log_step(trainer, pl_module)
        for name, value in values.items():
            writer.add_scalar(f"theory/{name}", float(value), step, new_style=True, double_precision=True)
