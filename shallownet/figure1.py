"""The paper's Figure 1 for width d = 1: GD and gradient-flow paths in the (a, b) plane.

Gradient flow moves along its hyperbola a^2 - b^2 = Q(0) to the curve of minima ab = phi; GD's discrete
steps cut across the hyperbolas, shrinking a^2 - b^2 by the factor P, and end at a flatter minimum
(closer to the balanced ones a = b = +-sqrt(phi)). The paths are computed with the package's own
optimizers (GradientDescent, DormandPrince) on the ScalarLinearNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List  # noqa: UP035 (omegaconf reads typing.List only)

import numpy as np
from omegaconf import DictConfig

from shallownet import theory
from shallownet.config import require
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
class Figure1Config:
    phi: float = 1.0  # the target Phi (> 0); the minima are the hyperbola ab = phi
    inits: List[List[float]] = field(default_factory=lambda: [[1.9, -0.4], [0.3, -1.6]])  # noqa: UP006  initial points
    # [a0, b0], one GD path per step size and one GF path each
    lrs: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.45])  # noqa: UP006  GD step sizes
    max_steps: int = 500  # GD steps at most per path
    tol: float = 1.0e-10  # a path stops once |ab - phi| <= tol
    flow_max_step: float = 0.02  # cap on the GF step: the drawn GF path is the integrator's own points
    extent: float = 2.2  # the plot shows [-extent, extent]^2: both branches of ab = phi
    output: FigureOutput = field(default_factory=FigureOutput)


def validate_figure1(cfg: DictConfig) -> None:
    require(cfg.phi > 0, "phi", "> 0", cfg.phi)
    require(len(cfg.inits) >= 1, "inits", "a non-empty list of [a0, b0] pairs", list(cfg.inits))
    for i, pair in enumerate(cfg.inits):
        require(len(pair) == 2 and (pair[0] + pair[1]) != 0, f"inits[{i}]",
                "a pair [a0, b0] with a0 != -b0 (a0 = -b0 flows into the saddle at 0)", list(pair))
    require(len(cfg.lrs) >= 1, "lrs", "a non-empty list of GD step sizes > 0", list(cfg.lrs))
    for i, lr in enumerate(cfg.lrs):
        require(lr > 0, f"lrs[{i}]", "> 0", lr)
    require(1 <= cfg.max_steps <= MAX_FLOW_STEPS, "max_steps",
            f"an integer from 1 to {MAX_FLOW_STEPS} (each GD path is kept and drawn point by point)", cfg.max_steps)
    for key in ("tol", "flow_max_step", "extent"):
        require(cfg[key] > 0, key, "> 0", cfg[key])
    require(FLOW_MAX_TIME / cfg.flow_max_step <= MAX_FLOW_STEPS, "flow_max_step",
            f">= {FLOW_MAX_TIME / MAX_FLOW_STEPS:g} (the flow path would need more than {MAX_FLOW_STEPS} points)",
            cfg.flow_max_step)



# --- paths -------------------------------------------------------------------------------------------


def _trajectory(a0: float, b0: float, phi: float, make_optimizer, rule: StopRule,
                clock=lambda optimizer: 0.0) -> tuple[np.ndarray, str]:
    """(a, b) after each optimizer step from (a0, b0), and the outcome by the runs' one StopRule."""
    import torch

    from shallownet.data import regression_points
    from shallownet.losses import half_mse
    from shallownet.model import ScalarLinearNet

    net = ScalarLinearNet(torch.tensor([a0], dtype=torch.float64), torch.tensor([b0], dtype=torch.float64))
    x, y = regression_points(1, phi, 0.0, 0)
    optimizer = make_optimizer(net.parameters())

    def closure():
        optimizer.zero_grad()
        loss = half_mse(net(x), y)
        loss.backward()
        return loss

    points = [(a0, b0)]
    while True:
        a, b = points[-1]
        outcome = rule.judge(a * b - phi, a * a + b * b, len(points) - 1, clock(optimizer))
        if outcome is not None:
            return np.array(points), outcome
        optimizer.step(closure)
        points.append((float(net.a.detach()), float(net.b.detach())))


def gd_path(a0: float, b0: float, eta: float, phi: float, max_steps: int, tol: float) -> tuple[np.ndarray, str]:
    from shallownet.optim import GradientDescent

    return _trajectory(a0, b0, phi, lambda params: GradientDescent(params, lr=eta),
                       StopRule(tol, DIVERGENCE_NORM, max_steps))


def gf_path(a0: float, b0: float, phi: float, max_step: float, tol: float,
            max_time: float = FLOW_MAX_TIME) -> tuple[np.ndarray, str]:
    from shallownet.flow import DormandPrince

    return _trajectory(a0, b0, phi, lambda params: DormandPrince(params, max_step=max_step),
                       StopRule(tol, DIVERGENCE_NORM, MAX_FLOW_STEPS, max_time), clock=lambda flow: flow.t)


# --- drawing -----------------------------------------------------------------------------------------


def compute_paths(cfg: DictConfig) -> list[dict]:
    """One record per (init, run): the path and its outcome, GF first, then GD for each step size."""
    records = []
    for a0, b0 in cfg.inits:
        path, outcome = gf_path(a0, b0, cfg.phi, cfg.flow_max_step, cfg.tol)
        records.append({"init": (a0, b0), "eta": None, "path": path, "outcome": outcome})
        for eta in cfg.lrs:
            path, outcome = gd_path(a0, b0, eta, cfg.phi, cfg.max_steps, cfg.tol)
            records.append({"init": (a0, b0), "eta": eta, "path": path, "outcome": outcome})
    return records


def draw(cfg: DictConfig, records: list[dict]):
    """Figure 1: the (a, b) plane with the minima, the hyperbolas a^2 - b^2 = c and the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phi, ext = cfg.phi, cfg.extent
    fig, ax = plt.subplots(figsize=(7.5, 7.5), dpi=150)
    grid = np.linspace(-ext, ext, 801)
    aa, bb = np.meshgrid(grid, grid)
    # the family of GF paths: hyperbolas a^2 - b^2 = c (faint); c = 0 is the balanced line a = b
    ax.contour(aa, bb, aa * aa - bb * bb, levels=np.linspace(-4, 4, 17), colors="0.85", linewidths=0.6,
               linestyles="solid", zorder=0)
    ax.axhline(0, color="0.75", lw=0.5, zorder=0)
    ax.axvline(0, color="0.75", lw=0.5, zorder=0)
    ax.plot(grid, grid, color="0.55", lw=0.8, ls=":", zorder=1, label="balanced a = b (flattest minima)")
    for sign in (1, -1):  # both branches of the minima curve ab = phi
        branch = sign * np.linspace(phi / ext, ext, 400)
        ax.plot(branch, phi / branch, color="k", lw=2.2, zorder=2, label="minima ab = \u03a6" if sign > 0 else None)
    colors = dict(zip(cfg.lrs, plt.get_cmap("plasma")(np.linspace(0.1, 0.8, len(cfg.lrs))), strict=True))
    labelled = set()
    for record in records:
        (a0, b0), eta, path = record["init"], record["eta"], record["path"]
        label = None if eta in labelled else "gradient flow" if eta is None else f"GD \u03b7 = {eta:g}"
        failures = sorted({r["outcome"] for r in records if r["eta"] == eta} - {CONVERGED})
        if label is not None and failures:  # say so in the legend: such a path has no limit marker
            label += f" ({', '.join(failures)})"
        labelled.add(eta)
        if eta is None:
            ax.plot(*_hyperbola_branch(a0, b0, grid), color="tab:green", lw=0.8, ls=":", zorder=1)
            ax.plot(path[:, 0], path[:, 1], color="tab:green", lw=1.4, alpha=0.8, zorder=3,
                    label=None if label is None else label + " (on its hyperbola, dotted)")
            a_gf, b_gf = theory.gf_limit([a0], [b0], phi)
            ax.plot(a_gf, b_gf, marker="*", ms=11, color="tab:green", mec="k", zorder=5)
            ax.plot(a0, b0, marker="o", ms=9, color="w", mec="k", mew=1.5, zorder=7)
            continue
        shown = path[np.abs(path).max(axis=1) < 10 * ext]  # a diverging path leaves the frame: stop there
        ax.plot(shown[:, 0], shown[:, 1], color=colors[eta], lw=1.1, marker="o", ms=3.0, zorder=4, label=label)
        if record["outcome"] == CONVERGED:
            ax.plot(*path[-1], marker="D", ms=5, color=colors[eta], mec="k", zorder=6)
    ax.plot([], [], ls="none", marker="*", ms=10, color="tab:green", mec="k",
            label="limits: GF \u2605 (closed form), GD \u25c6; start \u25cb")
    ax.set(xlim=(-ext, ext), ylim=(-ext, ext), aspect="equal", xlabel="a", ylabel="b",
           title=f"GD vs gradient flow, d = 1, loss \u00bd(ab \u2212 \u03a6)\u00b2, \u03a6 = {phi:g}\n"
                 "GF stays on its hyperbola; GD cuts across to flatter minima")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.95)
    fig.tight_layout()
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
            rows.append({"init": [a0, b0], "eta": record["eta"], "outcome": record["outcome"],
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
