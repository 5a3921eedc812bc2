"""Finding the TensorBoard SummaryWriter behind a Trainer's loggers."""

from __future__ import annotations

import lightning as L
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
