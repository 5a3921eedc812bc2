"""DynamicsMonitor: logs the loss, residual, norm and imbalance of a scalar linear net to TensorBoard."""

from __future__ import annotations

import lightning as L
import torch

from shallownet import quantities
from shallownet.callbacks.tensorboard import find_writer, log_step


class DynamicsMonitor(L.Callback):
    """Every `every_n_steps` steps (and at the first and last), logs the public tags

        dynamics/loss, dynamics/residual, dynamics/norm, dynamics/imbalance,
        dynamics/imbalance_norm, dynamics/imbalance_ratio (scalars)
        dynamics/imbalance_per_unit (histogram of the Q_i)

    The module must have `model` with parameters `a`, `b`, a `phi` and `full_batch_loss()`
    (ShallowNetModule has all three). imbalance_ratio is Q_k(t)/Q_k(0) for the unit k with the largest
    |Q_k(0)|: every Q_i shrinks by the same factor P (theory.md section 3), so this equals Q/Q(0) and
    stays defined when Q(0) = 0 but the units are not balanced.
    """

    def __init__(self, every_n_steps: int = 1):
        self.every_n_steps = every_n_steps
        self.last_step: int | None = None
        self.last: dict[str, float] = {}
        self._ref_unit = 0
        self._ref_q0 = float("nan")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        q0 = quantities.imbalance_per_unit(pl_module.model.a, pl_module.model.b).detach()
        self._ref_unit = int(q0.abs().argmax())
        self._ref_q0 = float(q0[self._ref_unit])
        self.last_step = None
        self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if log_step(trainer, pl_module) % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = log_step(trainer, pl_module)
        if step == self.last_step:
            return
        self.last_step = step
        a, b = pl_module.model.a.detach(), pl_module.model.b.detach()
        q_per_unit = quantities.imbalance_per_unit(a, b)
        with torch.no_grad():
            values = {"loss": float(pl_module.full_batch_loss())}
        values.update(quantities.shallow_state(a, b, pl_module.phi))
        values["imbalance_ratio"] = float(q_per_unit[self._ref_unit]) / self._ref_q0 if self._ref_q0 else float("nan")
        self.last = values
        writer = find_writer(trainer)
        if writer is None:
            return
        for name, value in values.items():
            # double precision: the tests check these against theory.md to round-off
            writer.add_scalar(f"dynamics/{name}", value, step, new_style=True, double_precision=True)
        self._log_histogram(writer, q_per_unit.cpu().numpy(), step)

    @staticmethod
    def _log_histogram(writer, q_per_unit, step: int) -> None:
        # at most 30 bins: TensorBoard's default ~1500 buckets would make every event ~10 kB
        try:
            writer.add_histogram("dynamics/imbalance_per_unit", q_per_unit, step, bins=min(q_per_unit.size, 30))
        except ValueError:  # inf/nan or a range too wide for numpy to bin (a diverging run): skip it
            pass
