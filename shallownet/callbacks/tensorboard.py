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
