"""DynamicsMonitor: logs whatever quantities a module knows, under dynamics/<name>, to every logger."""

from __future__ import annotations

import lightning as L
import torch

from shallownet.callbacks.logging import log_values
from shallownet.callbacks.tensorboard import find_writer, log_step
from shallownet.stop import INTERRUPTED


def module_quantities(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """`pl_module.quantities()`, else `pl_module.model.quantities()`: 0-dim tensors (scalars) and 1-dim
    tensors (histograms)."""
    source = getattr(pl_module, "quantities", None) or getattr(getattr(pl_module, "model", None), "quantities", None)
    if not callable(source):
        raise TypeError("DynamicsMonitor needs pl_module.quantities() or pl_module.model.quantities()")
    return source()


class DynamicsMonitor(L.Callback):
    """At train start, every `every_n_steps` steps and at train end, logs each 0-dim quantity as the scalar
    `dynamics/<name>` through the logger API (every logger, and trainer.callback_metrics) and each 1-dim
    quantity as the histogram `dynamics/<name>` (TensorBoard only).

    A model's `ratios = {"<ratio>": "<vector>"}` adds the scalar dynamics/<ratio>: the vector's entry with
    the largest initial magnitude, over its initial value (the reference is kept across a resume).
    `first` and `last` hold the first and last logged scalars (the run summary's init / final).
    """

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.last_step: int | None = None
        self.references: dict[str, tuple[int, float]] = {}  # ratio name -> (entry, initial value)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed run (global_step > 0) logs its first state only if an unbroken run would have
        if trainer.global_step == 0 or log_step(trainer, pl_module) % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if log_step(trainer, pl_module) % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not interrupted(pl_module):  # the resumed run logs from its checkpoint on: nothing extra here
            self._log(trainer, pl_module)

    def measure(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The scalars at the current state, logging nothing."""
        return self._scalars(module_quantities(pl_module), pl_module)[0]

    def state_dict(self) -> dict:
        return {"first": self.first, "last": self.last, "last_step": self.last_step, "references": self.references}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first, self.last = state_dict["first"], state_dict["last"]
        self.last_step, self.references = state_dict["last_step"], state_dict["references"]

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = log_step(trainer, pl_module)
        if step == self.last_step:
            return
        self.last_step = step
        scalars, vectors = self._scalars(module_quantities(pl_module), pl_module)
        if not self.first:
            self.first = scalars
        self.last = scalars
        log_values(trainer, {f"dynamics/{name}": value for name, value in scalars.items()}, step)
        writer = find_writer(trainer)
        if writer is not None:
            for name, vector in vectors.items():
                _log_histogram(writer, f"dynamics/{name}", vector.cpu().double().numpy(), step)


    def _scalars(self, values: dict, pl_module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        scalars = {name: float(v.detach()) for name, v in values.items() if v.dim() == 0}
        vectors = {name: v.detach() for name, v in values.items() if v.dim() == 1}
        for ratio, name in getattr(getattr(pl_module, "model", None), "ratios", {}).items():
            if ratio not in self.references:
                index = int(vectors[name].abs().argmax())
                self.references[ratio] = (index, float(vectors[name][index]))
            index, initial = self.references[ratio]
            scalars[ratio] = float(vectors[name][index]) / initial if initial else float("nan")
        return scalars, vectors


def interrupted(pl_module: L.LightningModule) -> bool:
    return getattr(pl_module, "outcome", None) == INTERRUPTED


def _log_histogram(writer, tag: str, values, step: int) -> None:
    # at most 30 bins: TensorBoard's default ~1500 buckets would make every event ~10 kB
    try:
        writer.add_histogram(tag, values, step, bins=min(values.size, 30))
    except ValueError:  # inf/nan or a range too wide for numpy to bin (a diverging run): skip it
        pass
