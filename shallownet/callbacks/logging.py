"""Logging from callbacks through Lightning's logger API, so every logger (TensorBoard, CSV, ...) gets
the values and `trainer.callback_metrics` holds the latest ones (ModelCheckpoint / EarlyStopping can
monitor them)."""

from __future__ import annotations

import lightning as L
import torch


def log_values(trainer: L.Trainer, values: dict[str, float], step: int) -> None:
    """Log scalars at an exact x-axis `step` (no log_every_n_steps throttling) to every logger.

    Loggers write only on global rank 0 (Lightning's loggers are rank-zero-only); callback_metrics are
    set on every rank, so a stop or checkpoint decision taken from them is the same everywhere.
    """
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    metrics = trainer.callback_metrics
    for name, value in values.items():
        metrics[name] = torch.tensor(float(value), dtype=torch.float64)
