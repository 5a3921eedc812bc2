"""Full-batch training at the edge of stability (Cohen et al. 2021, 2022; theory.md section 8.5) on a real net.

`shallownet eos` is `shallownet compare` with a real net's defaults (an MLP on scikit-learn's digits, MSE as
1/2 sum over classes / N, GD at several step sizes) plus the figure such papers show: the governing sharpness
along training against each process's stability threshold (2/eta for GD, (2 + 2 beta)/eta for momentum, the
preconditioned sharpness against 38/eta for Adam at beta1 = 0.9, ...), and the loss; and, per process, how
close to its threshold the sharpness hovers once it has reached it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List  # noqa: UP035 (omegaconf reads typing.List only)

import numpy as np

from shallownet.compare import CompareConfig
from shallownet.config import OutputConfig, TrainConfig, kind_list, kind_section

NEAR = 0.95  # "at the threshold": governing sharpness / threshold >= NEAR


@dataclass
class EosConfig(CompareConfig):  # configs/eos.yaml shows these defaults
    model: dict = kind_section("model", default="mlp")  # the model: a registered model kind; its keys follow
    processes: List[Any] = kind_list("process", key="method", default=[  # noqa: UP006  2/eta = 6.7, 5, 4
        {"method": "gd", "lr": 0.3}, {"method": "gd", "lr": 0.4}, {"method": "gd", "lr": 0.5}])
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=800, tol=1.0e-4))
    output: OutputConfig = field(default_factory=lambda: OutputConfig(name="eos"))
    section_defaults = {"monitor": {"dynamics": {"every_n_steps": 5},
                                    "sharpness": {"every_n_steps": 20, "tol": 1.0e-6, "max_iter": 200}}}
    kind_defaults = {"mlp": {"model": {"widths": [100]}}}  # one hidden layer: minutes on 2 cores


def hovering(times: np.ndarray, ratio: np.ndarray) -> dict:
    """Where the governing sharpness sits relative to the threshold, from the logged (process time, sharpness
    / threshold) points after the start: the first time with ratio >= NEAR, and from there on the median
    and range of the ratio (1 = at the threshold). The start is left out: a net that starts sharper than the
    threshold is first thrown out of that region."""
    later = times > 0
    reached = np.flatnonzero((ratio >= NEAR) & later)
    if reached.size == 0:
        return {"reached_at": None, "median": None, "min": None, "max": None,
                "max_before": float(ratio[later].max()) if later.any() else None}
    after = ratio[reached[0]:]
    return {"reached_at": float(times[reached[0]]), "median": float(np.median(after)), "min": float(after.min()),
            "max": float(after.max())}


def eos_figure(run_dir, result: dict):
    """The governing sharpness (the preconditioned one for adaptive processes) with each process's threshold
    (dashed), and the loss, against each process's own step count (processes of different clocks and
    thresholds side by side: a log sharpness axis when the thresholds span more than a decade)."""
    import matplotlib
    from matplotlib.figure import Figure

    from shallownet.events import read_metrics

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    sharp_ax, loss_ax = fig.subplots(1, 2)
    rows = result["rows"]
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(rows)))
    thresholds = [row["stability_threshold"] for row in rows if row["stability_threshold"] is not None]
    for row, colour in zip(rows, colours, strict=True):
        metrics = read_metrics(run_dir / row["run"])
        axis, steps = metrics["process/step"]  # x-axis point -> the sub-run's own step count

        def step_of(x, axis=axis, steps=steps):
            return np.interp(x, axis, steps)

        tag = "curvature/preconditioned_sharpness" if row["final_preconditioned_sharpness"] is not None \
            else "curvature/sharpness"
        if tag in metrics:
            x, sharpness = metrics[tag]
            sharp_ax.plot(step_of(x), sharpness, color=colour, lw=1.4, marker=".", ms=4, label=row["run"])
        if row["stability_threshold"] is not None:
            sharp_ax.axhline(row["stability_threshold"], color=colour, ls="--", lw=1.0)
        x, loss = metrics["dynamics/loss"]
        loss_ax.plot(step_of(x), loss, color=colour, lw=1.2, label=row["run"])
    if thresholds and max(thresholds) > 10 * min(thresholds):
        sharp_ax.set_yscale("log")
    sharp_ax.set(xlabel="step", ylabel="governing sharpness (preconditioned for rmsprop, adam)",
                 title=f"{result['model']}, full batch: sharpness per process (dashed: its threshold)")
    loss_ax.set(xlabel="step", ylabel="train loss", yscale="log", title=f"{result['model']}, full batch: train loss")
    for ax in (sharp_ax, loss_ax):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return fig
