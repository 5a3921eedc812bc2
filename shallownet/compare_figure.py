"""compare.png: what `shallownet compare` logged, every process against the shared process time, with theory's
limits from summary.json as horizontal lines.

Panels, for the quantities some sub-run logged: |residual| (the loss where there is no residual) with the
tolerance; the norm lam = |a|^2 + |b|^2 with lam_GF and each GD run's predicted limit sqrt(4 Phi^2 + P^2 Qn0^2);
the imbalance ratio Q/Q(0) with 1 (gradient flow keeps Q); each flow's distance to the GD run it models
(compare/distance_to_gd); the governing sharpness with each process's
stability threshold, lam_GF (the sharpness where gradient flow ends) and 2 Phi (the flattest minimum).
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import numpy as np

# (tag, y label, log scale); the first present of the first group is drawn, then each present one after
LOSS_PANELS = (("dynamics/residual", "|residual ε| = |ab − Φ|", True), ("dynamics/loss", "train loss", True))
PANELS = (("dynamics/norm", "norm λ = |a|² + |b|²", False),
          ("dynamics/imbalance_ratio", "imbalance ratio Q(t) / Q(0)", False),
          ("compare/distance_to_gd", "distance to the GD run at the same η, |θ(t) − θ_GD(t)|", False))
SHARPNESS = (("curvature/preconditioned_sharpness", "governing sharpness (preconditioned)", True),
             ("curvature/sharpness", "sharpness (largest Hessian eigenvalue)", True))


def timed_metrics(sub_run: Path, unit: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (process time, values)} from a sub-run's metrics.csv. A row's time is the process/time logged
    at its x-axis step (rows logged later at the same step share it: the sharpness of the same state), else
    step * unit (the x-axis counts process time in that unit, rounded)."""
    columns: dict[str, tuple[list, list]] = {}
    time_at: dict[int, float] = {}
    if not (sub_run / "metrics.csv").exists():  # a sub-run interrupted before its first log
        return {}
    with (sub_run / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            step = int(row.pop("step"))
            if row.get("process/time"):
                time_at[step] = float(row["process/time"])
            t = time_at.get(step, step * unit)
            for tag, value in row.items():
                if value != "":
                    times, values = columns.setdefault(tag, ([], []))
                    times.append(t)
                    values.append(float(value))
    return {tag: (np.array(t), np.array(v)) for tag, (t, v) in columns.items()}


def compare_figure(run_dir: Path, result: dict):
    """The figure of a compare run folder from its sub-runs' metrics and its result (summary.json)."""
    import matplotlib
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D

    from shallownet.figure1 import what_was_run
    from shallownet.plots import new_figure
    from shallownet.sweep.figures import readable_log_ticks

    rows, unit = result["rows"], result["time_unit"]
    metrics = [timed_metrics(Path(run_dir) / row["run"], unit) for row in rows]
    present = {tag for m in metrics for tag in m}
    loss = [p for p in LOSS_PANELS if p[0] in present][:1]
    sharp = [p for p in SHARPNESS if p[0] in present][:1]
    panels = loss + [p for p in PANELS if p[0] in present] + sharp
    fig = new_figure((6.0 * min(len(panels), 2), 4.2 * ((len(panels) + 1) // 2) + 0.9))
    axes = np.atleast_1d(fig.subplots((len(panels) + 1) // 2, min(len(panels), 2), squeeze=False)).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    colours = matplotlib.colormaps["tab10"](np.arange(len(rows)) % 10)  # processes are categories
    theory, phi = result.get("theory") or {}, result.get("phi")
    for ax, (tag, ylabel, log) in zip(axes, panels, strict=False):
        for row, m, colour in zip(rows, metrics, colours, strict=True):
            if tag in m:
                t, values = m[tag]
                sampled = tag.startswith("curvature/")  # every few steps: show the samples
                ax.plot(t, np.abs(values) if tag == "dynamics/residual" else values, color=colour, lw=1.2,
                        marker="o" if sampled else None, ms=3, label=row["run"])
        limits = _limits(ax, tag, rows, colours, theory, phi, result.get("tol"))
        if tag == "dynamics/norm" and result["model"] != "scalar_linear":
            ylabel = "squared parameter norm |θ|²"
        ax.set(xlabel="process time t (GD: η × steps; flow: its own time)", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            readable_log_ticks(ax.yaxis, low, high)
        ax.grid(alpha=0.3)
        if limits:
            ax.legend(*zip(*limits, strict=True), fontsize="x-small", loc="best",
                      handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})
    runs = [Line2D([], [], color=c, lw=1.4, label=row["run"]) for row, c in zip(rows, colours, strict=True)]
    fig.legend(handles=runs, loc="outside lower center", ncol=min(len(rows), 6), fontsize="small")
    model = result["model"] + (f", d = {result['width']}" if result.get("width") else "") + \
        (f", Φ = {phi:g}" if phi else "")
    named = what_was_run([{"process": row["run"], "flow": row["method"] == "flow"} for row in rows])
    title = textwrap.fill(f"{model}: {named}, from one init", width=110)  # many processes: several lines
    fig.suptitle(f"{title}\n(dotted or dashed: theory's limits)")
    return fig


def _limits(ax, tag, rows, colours, theory, phi, tol) -> list[tuple]:
    """theory's limits for the panel of `tag` as horizontal lines, and their (handle, label) legend entries:
    a limit of each process is drawn in its colour and named by one entry showing all the colours."""
    entries = []

    def line(value, label, **style):
        entries.append((ax.axhline(value, lw=1.0, **style), label))

    def each(key, style, label):
        lines = [ax.axhline(row[key], color=colour, lw=1.2, ls=style)
                 for row, colour in zip(rows, colours, strict=True)
                 if row.get(key) is not None and not (key == "theory_norm" and row["method"] == "flow")]
        if lines:
            entries.append((tuple(lines), label))

    if tag == "dynamics/residual" and tol:
        line(tol, f"tol = {tol:g} (converged below)", color="k", ls=":")
    if tag == "dynamics/norm":
        if theory.get("norm_gf"):
            line(theory["norm_gf"], "λ_GF (where gradient flow ends)", color="k", ls="--")
        each("theory_norm", ":", "λ_GD = √(4Φ² + P² Qn(0)²) of each GD run (dotted)")
    if tag == "dynamics/imbalance_ratio":
        line(1.0, "1 (gradient flow keeps Q)", color="k", ls="--")
    if tag.startswith("curvature/"):
        each("stability_threshold", "--", "stability threshold of each process (dashed)")
        if theory.get("norm_gf"):
            line(theory["norm_gf"], "λ_GF (sharpness where GF ends)", color="k", ls="-")
        if phi:
            line(2 * phi, "2Φ (flattest minimum)", color="0.4", ls="-.")
    return entries


def save_compare_figure(run_dir: Path, result: dict) -> str:
    """compare.png in run_dir and the same image in TensorBoard (tag `compare`); returns the file name."""
    from torch.utils.tensorboard import SummaryWriter

    from shallownet.plots import save_figure

    with SummaryWriter(str(run_dir)) as writer:
        save_figure(compare_figure(run_dir, result), Path(run_dir) / "compare.png", writer, "compare")
    return "compare.png"
