"""Full-batch training at the edge of stability (Cohen et al. 2021, 2022; theory.md section 8.5) on a real net.

`shallownet eos` is `shallownet compare` with a real net's defaults (an MLP on scikit-learn's digits, MSE as
1/2 sum over classes / N, GD at several step sizes) plus the figure such papers show: the governing sharpness
along training against each process's stability threshold (2/eta for GD, (2 + 2 beta)/eta for momentum, the
preconditioned sharpness against 38/eta for Adam at beta1 = 0.9, ...), and the loss; and, per process, how
close to its threshold the sharpness hovers once it has reached it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


def what_was_found(row: dict) -> str:
    """One line for the legend from the row's outcome and hovering (shallownet eos prints the long form)."""
    hover = row.get("hovering")
    if row["outcome"] == "diverged":
        return f"diverged at t = {row['time']:.3g}"
    if not hover or hover["reached_at"] is None and hover["max_before"] is None:  # nothing measured after t = 0
        return row["outcome"]
    if hover["reached_at"] is None:
        return f"stayed below {NEAR:g} x threshold (max {hover['max_before']:.2f} x)"
    when = f"t = {hover['reached_at']:.3g}"
    if row.get("eta") is not None and row["time"]:  # a discrete process: the x-axis is its step count
        when = f"step {round(hover['reached_at'] * row['steps'] / row['time'])}"
    return f"at {NEAR:g} x threshold from {when}, then {hover['median']:.3f} x (median)"


def what_was_run(run_dir) -> str:
    """'mlp [100] on digits, full batch, at most 800 steps' from the run folder's config.yaml."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    model = cfg.model.kind + (f" {list(cfg.model.widths)}" if cfg.model.get("widths") is not None else "")
    return f"{model} on {cfg.data.kind}, full batch, at most {cfg.train.max_steps} steps"


def eos_figure(run_dir, result: dict):
    """The governing sharpness (the preconditioned one for adaptive processes) with each process's threshold
    (dashed), and the loss, against each process's own step count (processes of different clocks and
    thresholds side by side: a log sharpness axis when the thresholds span more than a decade). Titles say
    what was run; the legend says what each process did (rows' `hovering`, set by the eos report)."""
    import matplotlib
    from matplotlib.legend_handler import HandlerTuple

    from shallownet.events import read_metrics
    from shallownet.plots import new_figure
    from shallownet.sweep.figures import readable_log_ticks

    fig = new_figure((13, 5.2))
    sharp_ax, loss_ax = fig.subplots(1, 2)
    rows = result["rows"]
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(rows)))
    thresholds = [row["stability_threshold"] for row in rows if row["stability_threshold"] is not None]
    dashed = []
    for row, colour in zip(rows, colours, strict=True):
        metrics = read_metrics(Path(run_dir) / row["run"])
        axis, steps = metrics["process/step"]  # x-axis point -> the sub-run's own step count

        def step_of(x, axis=axis, steps=steps):
            return np.interp(x, axis, steps)

        tag = "curvature/preconditioned_sharpness" if row["final_preconditioned_sharpness"] is not None \
            else "curvature/sharpness"
        if tag in metrics:
            x, sharpness = metrics[tag]
            sharp_ax.plot(step_of(x), sharpness, color=colour, lw=1.4, marker="o", ms=4,
                          label=f"{row['run']}: {what_was_found(row)}")
        if row["stability_threshold"] is not None:
            dashed.append(sharp_ax.axhline(row["stability_threshold"], color=colour, ls="--", lw=1.0))
        x, loss = metrics["dynamics/loss"]
        loss_ax.plot(step_of(x), loss, color=colour, lw=1.2, label=f"{row['run']}: {row['outcome']}")
    if thresholds and max(thresholds) > 10 * min(thresholds):
        sharp_ax.set_yscale("log")
    ran = what_was_run(run_dir)
    sharp_ax.set(xlabel="step", ylabel="governing sharpness (preconditioned for rmsprop, adam)",
                 title=f"{ran}\nsharpness at the samples (dots); dashed: each process's threshold")
    loss_ax.set(xlabel="step", ylabel="train loss", yscale="log", title=f"{ran}\ntrain loss")
    handles, labels = sharp_ax.get_legend_handles_labels()
    if dashed:
        handles.append(tuple(dashed))
        labels.append("stability threshold (2/η for GD), each in its colour")
    sharp_ax.legend(handles, labels, fontsize="small", handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)},
                    loc="upper center", bbox_to_anchor=(0.5, -0.13))  # below the axes: never over the data
    loss_ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13))
    readable_log_ticks(loss_ax.yaxis, *loss_ax.get_ylim())
    for ax in (sharp_ax, loss_ax):
        ax.grid(alpha=0.3)
    return fig


def save_eos_figure(run_dir, result: dict) -> None:
    """eos.png in run_dir and the same image in TensorBoard (tag `eos`), as the other commands' figures."""
    from torch.utils.tensorboard import SummaryWriter

    from shallownet.plots import save_figure

    with SummaryWriter(str(run_dir)) as writer:
        save_figure(eos_figure(run_dir, result), Path(run_dir) / "eos.png", writer, "eos", dpi=120)
    result.setdefault("figures", []).append("eos.png")
