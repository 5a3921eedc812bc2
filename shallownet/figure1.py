"""The paper's Figure 1 for width d = 1: GD and gradient-flow paths in the (a, b) plane.

Gradient flow moves along its hyperbola a^2 - b^2 = Q(0) to the curve of minima ab = phi; GD's discrete
steps cut across the hyperbolas, shrinking a^2 - b^2 by the factor P, and end at a flatter minimum
(closer to the balanced ones a = b = +-sqrt(phi)). The paths are those of any registered processes (the
config's `processes`, as in compare: GD at several step sizes and gradient flow by default, momentum or Adam
as well), each run by its own optimizer on the ScalarLinearNet.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List  # noqa: UP035 (omegaconf reads typing.List only)

import numpy as np
from omegaconf import DictConfig

from shallownet import registry, theory
from shallownet.compare import process_label
from shallownet.config import kind_list, require, validate_process
from shallownet.processes.base import Process
from shallownet.stop import CONVERGED, StopRule

DIVERGENCE_NORM = 1e12  # as train.divergence_norm: |a|^2 + |b|^2 beyond this is divergence
FLOW_MAX_TIME = 100.0
MAX_FLOW_STEPS = 10**6  # the flow path is drawn point by point (shallownet figure1 refuses more)

# --- config (torch is imported only by the functions that compute, so --help and checks stay fast) -----


@dataclass
class FigureOutput:
    root: str = "runs"  # the run folder is <root>/<name>/version_<n>
    name: str = "figure1"  # the run folder's parent under root


@dataclass
class FigureTrainConfig:
    max_steps: int = 500  # steps per discrete path (each path is kept and drawn point by point)
    tol: float = 1.0e-10  # a path ends when |ab - phi| <= tol


PROCESSES_HINT = "processes, a list like [{method: gd, lr: 0.1}, {method: flow, max_step: 0.02}]"


@dataclass
class Figure1Config:
    phi: float = 1.0  # the target Phi (> 0); the minima are the hyperbola ab = phi
    inits: List[List[float]] = field(default_factory=lambda: [[1.9, -0.4], [0.3, -1.6]])  # noqa: UP006  initial points
    # [a0, b0], one path per process from each
    processes: List[Any] = kind_list("process", key="method", default=[  # noqa: UP006  the processes drawn
        {"method": "gd", "lr": 0.1}, {"method": "gd", "lr": 0.3}, {"method": "gd", "lr": 0.45},
        {"method": "flow", "max_step": 0.02}])  # (a flow needs max_step: its drawn path is its own points)
    train: FigureTrainConfig = field(default_factory=FigureTrainConfig)  # the budget and tolerance of each path
    extent: float = 2.2  # the plot shows [-extent, extent]^2: both branches of ab = phi
    output: FigureOutput = field(default_factory=FigureOutput)

    renamed = {"lrs": PROCESSES_HINT, "max_steps": "train.max_steps", "tol": "train.tol",
               "flow_max_step": f"the max_step of the flow entry of {PROCESSES_HINT}"}


MAGNITUDE = (1e-50, 1e50)  # |a0|, |b0|, phi: squares and their squares within float64's normal range


def _representable(value: float, zero: bool) -> bool:
    """Within MAGNITUDE (or 0 where allowed): the squares of the path and of theory's limits, a^2, Q^2 and
    (a b - phi)^2, stay finite normal float64 numbers."""
    return (zero and value == 0) or MAGNITUDE[0] <= abs(value) <= MAGNITUDE[1]


def validate_figure1(cfg: DictConfig) -> None:
    require(cfg.phi > 0 and _representable(cfg.phi, zero=False), "phi",
            f"> 0, from {MAGNITUDE[0]:g} to {MAGNITUDE[1]:g} (float64 squares of the path stay finite)", cfg.phi)
    require(len(cfg.inits) >= 1, "inits", "a non-empty list of [a0, b0] pairs", list(cfg.inits))
    for i, pair in enumerate(cfg.inits):
        require(len(pair) == 2 and (pair[0] + pair[1]) != 0, f"inits[{i}]",
                "a pair [a0, b0] with a0 != -b0 (a0 = -b0 flows into the saddle at 0)", list(pair))
        require(all(_representable(value, zero=True) for value in pair), f"inits[{i}]",
                f"a pair of 0 or magnitudes from {MAGNITUDE[0]:g} to {MAGNITUDE[1]:g} (float64 squares of the path "
                "stay finite and normal)", list(pair))
    for i, entry in enumerate(cfg.processes):
        validate_process(entry, f"processes[{i}]")
        if entry.method == "flow":
            require(entry.max_step is not None and FLOW_MAX_TIME / entry.max_step <= MAX_FLOW_STEPS,
                    f"processes[{i}].max_step", f"a cap >= {FLOW_MAX_TIME / MAX_FLOW_STEPS:g} on the flow's step "
                    f"(its path is drawn from its own points, at most {MAX_FLOW_STEPS})", entry.max_step)
    labels = [process_label(entry) for entry in cfg.processes]
    require(len(set(labels)) == len(labels), "processes", "a non-empty list of distinct processes", labels)
    require(1 <= cfg.train.max_steps <= MAX_FLOW_STEPS, "train.max_steps",
            f"an integer from 1 to {MAX_FLOW_STEPS} (each path is kept and drawn point by point)",
            cfg.train.max_steps)
    for key in ("train.tol", "extent"):
        value = cfg.train.tol if key == "train.tol" else cfg.extent
        require(value > 0, key, "> 0", value)


# --- paths -------------------------------------------------------------------------------------------


def process_path(a0: float, b0: float, phi: float, process: Process, rule: StopRule) -> tuple[np.ndarray, str]:
    """(a, b) after each step of the process from (a0, b0), and the outcome by the runs' one StopRule (the
    process time is the flow's clock: a flow ends by FLOW_MAX_TIME at the latest)."""
    import torch

    from shallownet import interrupt
    from shallownet.data import regression_points
    from shallownet.losses import half_mse
    from shallownet.model import ScalarLinearNet

    net = ScalarLinearNet(torch.tensor([a0], dtype=torch.float64), torch.tensor([b0], dtype=torch.float64))
    x, y = regression_points(1, phi, 0.0, 0)
    optimizer = process.make_optimizer(net.parameters(), max_time=FLOW_MAX_TIME)

    def closure():
        optimizer.zero_grad()
        loss = half_mse(net(x), y)
        loss.backward()
        return loss

    points = [(a0, b0)]
    while True:
        a, b = points[-1]
        steps = len(points) - 1
        outcome = rule.judge(a * b - phi, a * a + b * b, steps, process.time(steps),
                             interrupted=interrupt.requested() is not None)  # SIGINT / SIGTERM: the path so far
        if outcome is not None:
            return np.array(points), outcome
        if process.integrates:
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
        points.append((float(net.a.detach()), float(net.b.detach())))


def stop_rule(cfg: DictConfig, process: Process) -> StopRule:
    """A discrete path stops after train.max_steps; a flow's after FLOW_MAX_TIME of flow time."""
    if process.integrates:
        return StopRule(cfg.train.tol, DIVERGENCE_NORM, MAX_FLOW_STEPS, FLOW_MAX_TIME)
    return StopRule(cfg.train.tol, DIVERGENCE_NORM, cfg.train.max_steps)


# --- drawing -----------------------------------------------------------------------------------------


def compute_paths(cfg: DictConfig) -> list[dict]:
    """One record per (init, process): the path and its outcome, in the order of cfg.processes."""
    records = []
    for a0, b0 in cfg.inits:
        for entry in cfg.processes:
            process = registry.process_kind(entry.method).build(entry)
            path, outcome = process_path(a0, b0, cfg.phi, process, stop_rule(cfg, process))
            records.append({"init": (a0, b0), "process": process_label(entry), "flow": process.integrates,
                            "path": path, "outcome": outcome})
    return records


def what_was_run(records: list[dict]) -> str:
    """'GD at eta = 0.1, 0.3, 0.45 and gradient flow' (or the processes' labels) for the title."""
    names = list(dict.fromkeys(r["process"] for r in records if not r["flow"]))
    gd = [name[len("gd_lr="):] for name in names if legend_label(name).startswith("GD")]
    parts = ([f"GD at \u03b7 = {', '.join(gd)}"] if gd else []) + [legend_label(n) for n in names
                                                                    if not legend_label(n).startswith("GD")]
    if any(r["flow"] for r in records):
        parts.append("gradient flow")
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def legend_label(label: str) -> str:
    """gd_lr=0.3 -> GD eta = 0.3; momentum_lr=0.1_momentum=0.5 -> momentum lr=0.1, momentum=0.5."""
    method, _, rest = label.partition("_")
    if method == "gd" and rest.startswith("lr=") and "_" not in rest:
        return f"GD \u03b7 = {rest[3:]}"
    return f"{method} {rest.replace('_', ', ')}".strip()


def draw(cfg: DictConfig, records: list[dict]):
    """Figure 1: the (a, b) plane with the minima, the hyperbolas a^2 - b^2 = c and the paths."""
    import matplotlib
    from matplotlib.lines import Line2D

    from shallownet.plots import new_figure

    phi, ext = cfg.phi, cfg.extent
    fig = new_figure((7.5, 7.9))
    ax = fig.subplots()
    grid = np.linspace(-ext, ext, 801)
    aa, bb = np.meshgrid(grid, grid)
    # the family of GF paths: hyperbolas a^2 - b^2 = c (faint); c = 0 is the balanced line a = b
    ax.contour(aa, bb, aa * aa - bb * bb, levels=np.linspace(-4, 4, 17), colors="0.85", linewidths=0.6,
               linestyles="solid", zorder=0)
    ax.plot([], [], color="0.8", lw=0.8, label="a² − b² = c, c = −4, −3.5, …, 4 (gradient flow keeps c)")
    ax.axhline(0, color="0.75", lw=0.5, zorder=0)
    ax.axvline(0, color="0.75", lw=0.5, zorder=0)
    ax.plot(grid, grid, color="0.55", lw=0.8, ls=":", zorder=1, label="balanced a = b (flattest minima)")
    for sign in (1, -1):  # both branches of the minima curve ab = phi
        branch = sign * np.linspace(phi / ext, ext, 400)
        ax.plot(branch, phi / branch, color="k", lw=2.2, zorder=2, label="minima ab = \u03a6" if sign > 0 else None)
    discrete = list(dict.fromkeys(r["process"] for r in records if not r["flow"]))
    colors = dict(zip(discrete, matplotlib.colormaps["plasma"](np.linspace(0.1, 0.8, len(discrete))), strict=True))
    labelled = set()
    for record in records:
        (a0, b0), name, path = record["init"], record["process"], record["path"]
        label = None if name in labelled else "gradient flow" if record["flow"] else legend_label(name)
        failures = sorted({r["outcome"] for r in records if r["process"] == name} - {CONVERGED})
        if label is not None and failures:  # say so in the legend: such a path has no limit marker
            label += f" ({', '.join(failures)})"
        labelled.add(name)
        if record["flow"]:
            ax.plot(*_hyperbola_branch(a0, b0, grid), color="tab:green", lw=0.8, ls=":", zorder=1)
            ax.plot(path[:, 0], path[:, 1], color="tab:green", lw=1.4, alpha=0.8, zorder=3,
                    label=None if label is None else label + " (on its hyperbola, dotted)")
            a_gf, b_gf = theory.gf_limit([a0], [b0], phi)
            # a large open star under the paths' end points: a discrete limit close to it (GD at a small step
            # ends within a few hundredths) shows inside the star instead of being hidden by it
            ax.plot(a_gf, b_gf, marker="*", ms=22, mfc="none", mec="tab:green", mew=1.6, zorder=5)
            ax.plot(a0, b0, marker="o", ms=9, color="w", mec="k", mew=1.5, zorder=7)
            continue
        shown = path[np.abs(path).max(axis=1) < 10 * ext]  # a diverging path leaves the frame: stop there
        ax.plot(shown[:, 0], shown[:, 1], color=colors[name], lw=1.1, marker="o", ms=3.0, zorder=4, label=label)
        if record["outcome"] == CONVERGED:
            ax.plot(*path[-1], marker="D", ms=5, color=colors[name], mec="k", zorder=9)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], ls="none", marker="*", ms=14, mfc="none", mec="tab:green", mew=1.6,
                       label="GF limit (closed form, theory.md section 4)"),
                Line2D([], [], ls="none", marker="D", ms=5, color="0.6", mec="k",
                       label="discrete path's last point (its colour)"),
                Line2D([], [], ls="none", marker="o", ms=8, color="w", mec="k", mew=1.5, label="start")]
    ax.set(xlim=(-ext, ext), ylim=(-ext, ext), aspect="equal", xlabel="a", ylabel="b",
           title=textwrap.fill(f"{what_was_run(records)} from {len(cfg.inits)} starts", 64) + "\n"
                 f"d = 1, loss \u00bd(ab \u2212 \u03a6)\u00b2, \u03a6 = {phi:g}, at most {cfg.train.max_steps} steps")
    ax.legend(handles=handles, loc="upper left", fontsize=7.5, framealpha=0.95)
    return fig


def _hyperbola_branch(a0: float, b0: float, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The branch of a^2 - b^2 = a0^2 - b0^2 through (a0, b0): the curve gradient flow stays on."""
    q0 = a0 * a0 - b0 * b0
    if q0 >= 0:
        return math.copysign(1.0, a0) * np.sqrt(q0 + grid * grid), grid
    return grid, math.copysign(1.0, b0) * np.sqrt(grid * grid - q0)


def summarize(records: list[dict]) -> list[dict]:
    """What the figure shows, per path: outcome, steps, end point, Q(T)/Q(0) and lam(T) (for figure1.json)."""
    rows = []
    for record in records:
        (a0, b0), (a, b) = record["init"], record["path"][-1]
        with np.errstate(all="ignore"):  # a diverged end point is inf/nan: written as null
            rows.append({"init": [a0, b0], "process": record["process"], "outcome": record["outcome"],
                         "steps": len(record["path"]) - 1, "end": [float(a), float(b)],
                         "imbalance_ratio": float((a * a - b * b) / (a0 * a0 - b0 * b0)),
                         "norm": float(a * a + b * b)})
    return rows


def make_figure1(cfg: DictConfig, run_dir: Path) -> dict:
    """Compute the paths, save figure1.png in run_dir and the same image in its TensorBoard events."""
    from torch.utils.tensorboard import SummaryWriter

    from shallownet.plots import save_figure

    records = compute_paths(cfg)
    fig = draw(cfg, records)
    with SummaryWriter(str(run_dir)) as writer:
        save_figure(fig, run_dir / "figure1.png", writer, "figure1", dpi=150)
    return {"phi": cfg.phi, "png": str(run_dir / "figure1.png"), "paths": summarize(records)}
