"""Reading a run's logs back: TensorBoard event files (scalars, histograms) and metrics.csv (exact values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from tensorboard.util import tensor_util


def load(log_dir: str | Path) -> EventAccumulator:
    """All events of one TensorBoard run folder, nothing sampled away."""
    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0, TENSORS: 0, HISTOGRAMS: 0})
    acc.Reload()
    return acc


def read_scalars(log_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} for every scalar tag, whether written as float32 or as float64 tensors."""
    acc = load(log_dir)
    out = {}
    for tag in acc.Tags()[SCALARS]:
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=np.float64))
    for tag in acc.Tags()[TENSORS]:
        events = acc.Tensors(tag)
        values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
        if all(v.size == 1 and v.dtype.kind in "fiu" for v in values):  # not text such as layouts
            out[tag] = (np.array([e.step for e in events]), np.array([float(v) for v in values]))
    return out


def read_metrics(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} from a run's metrics.csv: every scalar at full float64 precision."""
    import csv

    columns: dict[str, tuple[list, list]] = {}
    with (Path(run_dir) / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            step = int(row.pop("step"))
            for tag, value in row.items():
                if value != "":
                    steps, values = columns.setdefault(tag, ([], []))
                    steps.append(step)
                    values.append(float(value))
    return {tag: (np.array(s), np.array(v)) for tag, (s, v) in columns.items()}
