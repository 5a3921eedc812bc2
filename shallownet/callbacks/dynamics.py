"""DynamicsMonitor: logs whatever quantities a module knows, under dynamics/<name>, to every logger."""

from __future__ import annotations

import lightning as L
import torch

from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.tensorboard import find_writer, log_histogram, log_step
from shallownet.processes.base import process_of

PROCESS_STEP = "process/step"
PROCESS_TIME = "process/time"


def module_quantities(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """`pl_module.quantities()`, else `pl_module.model.quantities()`: 0-dim tensors (scalars) and 1-dim
    tensors (histograms)."""
    source = getattr(pl_module, "quantities", None) or getattr(getattr(pl_module, "model", None), "quantities", None)
    if not callable(source):
        raise TypeError("DynamicsMonitor needs pl_module.quantities() or pl_module.model.quantities()")
    return source()


class DynamicsMonitor(PeriodicMonitor):
    """Logs each 0-dim quantity as the scalar `dynamics/<name>` through the logger API (every logger, and
    trainer.callback_metrics) and each 1-dim quantity as the histogram `dynamics/<name>` (TensorBoard only),
    with the process's own step count and time as `process/step` and `process/time` (the x-axis of a
    compare run is shared time; these say where each process was). Cadence: PeriodicMonitor's.

    A model's `ratios = {"<ratio>": "<vector>"}` adds the scalar dynamics/<ratio>: the vector's entry with
    the largest initial magnitude, over its initial value (the reference is kept across a resume).
    """

    def __init__(self, every_n_steps: int = 1):
        super().__init__(every_n_steps)
        self.references: dict[str, tuple[int, float]] = {}  # ratio name -> (entry, initial value)

    def refusal(self, pl_module, process) -> str | None:
        model = getattr(pl_module, "model", None)
        if not callable(getattr(pl_module, "quantities", None)) and not callable(getattr(model, "quantities", None)):
            return "the module has no quantities() (nor has pl_module.model)"
        return None

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        scalars, vectors = self.quantities(pl_module)
        step = trainer.global_step
        values = {f"dynamics/{name}": value for name, value in scalars.items()}
        values[PROCESS_STEP] = float(step)
        process = process_of(trainer, pl_module)
        values[PROCESS_TIME] = process.time(step)
        values.update(process.clock(step))
        writer = find_writer(trainer)
        if writer is not None:
            x = log_step(trainer, pl_module)
            for name, vector in vectors.items():
                log_histogram(writer, f"dynamics/{name}", vector.cpu().double().numpy(), x)
        return values

    def quantities(self, pl_module: L.LightningModule) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(scalars by name, vectors by name) at the current state, logging nothing."""
        values = module_quantities(pl_module)
        scalars = {name: float(v.detach()) for name, v in values.items() if v.dim() == 0}
        vectors = {name: v.detach() for name, v in values.items() if v.dim() == 1}
        for ratio, name in getattr(getattr(pl_module, "model", None), "ratios", {}).items():
            if ratio not in self.references:
                index = int(vectors[name].abs().argmax())
                self.references[ratio] = (index, float(vectors[name][index]))
            index, initial = self.references[ratio]
            scalars[ratio] = float(vectors[name][index]) / initial if initial else float("nan")
        return scalars, vectors

    def extra_state(self) -> dict:
        return {"references": self.references}

    def load_extra_state(self, state: dict) -> None:
        self.references = state["references"]
