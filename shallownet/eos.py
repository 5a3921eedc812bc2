"""Full-batch GD at the edge of stability (Cohen et al. 2021, theory.md section 8.5) on a real net.

`shallownet eos` is `shallownet compare` with a real net's defaults (an MLP on scikit-learn's digits, MSE as
1/2 sum over classes / N, several step sizes, gradient flow off), plus the figure such papers show: the
sharpness along training with the 2/eta lines, and the loss; and, per step size, how close to 2/eta the
sharpness hovers once it has reached it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List  # noqa: UP035 (omegaconf reads typing.List only)

import numpy as np

from shallownet.compare import CompareConfig, FlowConfig, GDStepSizes, run_name
from shallownet.config import MonitorConfig, OutputConfig, SharpnessConfig, TrainConfig, kind_section

HOVER_TAIL = 0.5  # the hovering is measured over the last half of the steps after S first reaches 2/eta


@dataclass
class EosConfig(CompareConfig):  # configs/eos.yaml shows these defaults
    model: dict = kind_section("model", default="mlp")
    gd: GDStepSizes = field(default_factory=lambda: GDStepSizes(lrs=[0.04, 0.08, 0.16]))  # 2/eta = 50, 25, 12.5
    gf: FlowConfig = field(default_factory=lambda: FlowConfig(enabled=False, max_time=20.0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1500, tol=1.0e-4))
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(
        every_n_steps=5, sharpness=SharpnessConfig(every_n_steps=20, tol=1.0e-6, max_iter=200)))
    output: OutputConfig = field(default_factory=lambda: OutputConfig(name="eos"))
    kind_defaults = {}


def hovering(steps: np.ndarray, sharpness: np.ndarray, eta: float) -> dict:
    """Where the sharpness is relative to 2/eta: the first logged step at or above it, and over the last
    HOVER_TAIL of the steps after that the median and range of eta * S / 2 (1 = exactly at 2/eta)."""
    reached = np.flatnonzero(eta * sharpness >= 2.0)
    if reached.size == 0:
        return {"reached_at": None, "median": None, "min": None, "max": None,
                "max_before": float(eta * sharpness.max() / 2) if sharpness.size else None}
    first = steps[reached[0]]
    tail = steps >= first + (1 - HOVER_TAIL) * (steps[-1] - first)
    ratio = eta * sharpness[tail] / 2
    return {"reached_at": int(first), "median": float(np.median(ratio)), "min": float(ratio.min()),
            "max": float(ratio.max())}


def eos_figure(run_dir: Path, lrs: List[float]):  # noqa: UP006
    """Sharpness (with 2/eta) and loss against the GD step, one colour per step size."""
    import matplotlib
    from matplotlib.figure import Figure

    from shallownet.events import read_metrics

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    sharp_ax, loss_ax = fig.subplots(1, 2)
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(lrs)))
    for eta, colour in zip(lrs, colours, strict=True):
        metrics = read_metrics(run_dir / run_name(eta))
        steps, sharpness = metrics["curvature/sharpness"]
        sharp_ax.plot(steps, sharpness, color=colour, lw=1.6, label=f"η = {eta:g}")
        sharp_ax.axhline(2 / eta, color=colour, ls="--", lw=1.0)
        loss_steps, loss = metrics["dynamics/loss"]
        loss_ax.plot(loss_steps, loss, color=colour, lw=1.2, label=f"η = {eta:g}")
    sharp_ax.set(xlabel="GD step", ylabel="sharpness S (top Hessian eigenvalue)",
                 title="progressive sharpening to 2/η (dashed), then hovering there")
    loss_ax.set(xlabel="GD step", ylabel="train loss", yscale="log", title="the loss keeps falling, not monotonically")
    for ax in (sharp_ax, loss_ax):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return fig
