"""Finding the TensorBoard SummaryWriter behind a Trainer's loggers."""

from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger


def find_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None when it has none.

    Callbacks write through it directly (not self.log): exact steps, no log_every_n_steps throttling,
    and histograms and figures, which self.log cannot take.
    """
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_step(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """The TensorBoard x-axis for the module's current state.

    GD logs at trainer.global_step. A module that integrates gradient flow defines `aligned_step()`
    (t / eta_ref, rounded) so that its curves overlay GD's at t = eta * k.
    """
    aligned = getattr(pl_module, "aligned_step", None)
    return int(aligned()) if callable(aligned) else int(trainer.global_step)


def log_histogram(writer, tag: str, values, step: int) -> None:
    """A histogram event, skipped where the values cannot be binned (a diverging run is an outcome, not a crash)."""
    # at most 30 bins: TensorBoard's default ~1500 buckets would make every event ~10 kB
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a sum of squares may overflow to inf: still drawable
            writer.add_histogram(tag, values, step, bins=min(len(values), 30))
    except ValueError:  # inf/nan, or values so large that numpy's bin edges overflow (torch: "histogram is empty")
        pass
