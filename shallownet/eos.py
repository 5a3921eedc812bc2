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

NEAR = 0.95  # "at 2/eta": eta S / 2 >= NEAR


@dataclass
class EosConfig(CompareConfig):  # configs/eos.yaml shows these defaults
    model: dict = kind_section("model", default="mlp")
    gd: GDStepSizes = field(default_factory=lambda: GDStepSizes(lrs=[0.3, 0.4, 0.5]))  # 2/eta = 6.7, 5, 4
    gf: FlowConfig = field(default_factory=lambda: FlowConfig(enabled=False, max_time=20.0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=800, tol=1.0e-4))
    monitor: MonitorConfig = field(default_factory=lambda: MonitorConfig(
        every_n_steps=5, sharpness=SharpnessConfig(every_n_steps=20, tol=1.0e-6, max_iter=200)))
    output: OutputConfig = field(default_factory=lambda: OutputConfig(name="eos"))
    kind_defaults = {"mlp": {"model": {"widths": [100]}}}  # one hidden layer: minutes on 2 cores


def hovering(steps: np.ndarray, sharpness: np.ndarray, eta: float) -> dict:
    """Where the sharpness sits relative to 2/eta, from the logged (GD step, S) points after the start: the
    first step with eta S / 2 >= NEAR, and from there on the median and range of eta S / 2 (1 = at 2/eta).
    The start is left out: a net that starts sharper than 2/eta is first thrown out of that region."""
    ratio = eta * sharpness / 2
    reached = np.flatnonzero((ratio >= NEAR) & (steps > 0))
    if reached.size == 0:
        return {"reached_at": None, "median": None, "min": None, "max": None,
                "max_before": float(ratio[steps > 0].max()) if (steps > 0).any() else None}
    after = ratio[reached[0]:]
    return {"reached_at": int(steps[reached[0]]), "median": float(np.median(after)), "min": float(after.min()),
            "max": float(after.max())}


def gd_steps(logged: np.ndarray, eta: float, time_unit: float) -> np.ndarray:
    """GD step k of logged x-axis values (compare logs every run at round(eta k / time_unit))."""
    return np.round(logged * time_unit / eta).astype(int)


def eos_figure(run_dir: Path, lrs: List[float], time_unit: float):  # noqa: UP006
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
        steps = gd_steps(steps, eta, time_unit)
        sharp_ax.plot(steps, sharpness, color=colour, lw=1.6, label=f"η = {eta:g}")
        sharp_ax.axhline(2 / eta, color=colour, ls="--", lw=1.0)
        loss_steps, loss = metrics["dynamics/loss"]
        loss_ax.plot(gd_steps(loss_steps, eta, time_unit), loss, color=colour, lw=1.2, label=f"η = {eta:g}")
    sharp_ax.set(xlabel="GD step", ylabel="sharpness S (top Hessian eigenvalue)",
                 title="progressive sharpening to 2/η (dashed), then hovering there")
    loss_ax.set(xlabel="GD step", ylabel="train loss", yscale="log", title="the loss keeps falling, not monotonically")
    for ax in (sharp_ax, loss_ax):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return fig
