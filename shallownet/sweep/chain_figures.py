"""Figures of a chain sweep (depth-L scalar chains, theory.md 8.2) from chain_records.

`chain_maps`: three maps over step size eta (x) and initial scale s (y): the final sharpness over the
least sharpness of any minimum, L |Phi|^(2-2/L); the imbalance kept, (w_1^2 - w_L^2)(T)/(w_1^2 - w_L^2)(0);
and the steps to converge. Cells that diverged are black, cells not converged within the budget hatched grey,
so neither can be mistaken for a value (a run that starts converged has 0 steps: its own colour).
Theory lines on every map: eta = 2 / (L |Phi|^(2-2/L)), beyond which no minimum is stable, and
eta = 2 / S_GF, the edge of stability of the minimum gradient flow reaches from each initial point.
`chain_sharpness_curves`: final sharpness against eta for a few scales, with S_GF, 2/eta and L|Phi|^(2-2/L).

Figures are matplotlib Figures (no pyplot state), to be saved as PNG or sent to TensorBoard; the sweep
command imports this module only once its input is known good (matplotlib costs seconds).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from shallownet.plots import new_figure
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS
from shallownet.sweep.figures import (
    DIVERGED_COLOUR,
    MAX_STEPS_COLOUR,
    MAX_STEPS_HATCH,
    ZERO_STEPS_COLOUR,
    draw_map,
    extension,
    log_axis,
    mark_cells,
    mark_start_on_minimum,
    readable_log_ticks,
    robust_limits,
)

THRESHOLD_COLOUR = "red"  # eta = 2 / (L Phi^(2-2/L))
GF_LINE_COLOUR = "orange"  # eta = 2 / S_GF
N_SHARPNESS_CURVES = 5


def chain_figures(recs: dict, max_steps: int | None = None, tol: float | None = None) -> dict:
    """{'chain_maps': Figure, 'chain_sharpness': Figure}."""
    return {"chain_maps": chain_maps(recs, max_steps, tol), "chain_sharpness": chain_sharpness_curves(recs)}


def save_chain_figures(recs: dict, folder, max_steps: int | None = None, tol: float | None = None,
                       dpi: int = 150) -> list[Path]:
    """Write chain_maps.png and chain_sharpness.png into `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in chain_figures(recs, max_steps, tol).items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def chain_maps(recs: dict, max_steps: int | None = None, tol: float | None = None):
    """Marked as figure3.png is: not converged grey and hatched, diverged black, the steps in the same colour
    map (bright: slow); the sharpness and steps colour limits from robust percentiles (arrows: cells beyond)."""
    outcome = recs["outcome"]
    depth, phi = int(recs["depth"]), float(recs["phi"])
    fig = new_figure((18, 6.0))
    sharp_ax, ratio_ax, steps_ax = fig.subplots(1, 3)

    converged = outcome == CONVERGED
    sharp = np.ma.masked_where(~converged, recs["sharpness_over_least"])
    _, top = robust_limits(sharp.compressed(), default=(1.0, 10.0))
    norm = LogNorm(vmin=1.0, vmax=max(top, 1.5))  # 1: no minimum is flatter than L Phi^(2-2/L)
    mesh = draw_map(sharp_ax, recs, sharp, "viridis", norm, label_size="large")
    _log_colorbar(fig, mesh, sharp_ax, f"S / (L Φ^(2-2/L)) = S / {float(recs['least_sharpness']):.4g}",
                  "max" if (sharp.compressed() > norm.vmax).any() else "neither")  # below 1: round-off only
    sharp_ax.set_title("final sharpness over the least of any minimum")

    ratio = np.ma.masked_where(~converged, recs["imbalance_ratio"])
    # The scale stops at -1 (a flipped imbalance as large as at the start); below it the colour saturates.
    low = min(float(ratio.min()), -1e-3) if ratio.count() else -1.0
    high = max(float(ratio.max()), 1e-3) if ratio.count() else 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=max(low, -1.0), vmax=high)
    mesh = draw_map(ratio_ax, recs, ratio, "RdBu_r", norm, label_size="large")
    fig.colorbar(mesh, ax=ratio_ax, extend="min" if low < -1.0 else "neither",
                 label="(w_1² − w_L²)(T) / (w_1² − w_L²)(0) = P")
    ratio_ax.set_title("imbalance kept by GD")

    steps = np.ma.masked_where(~converged | (recs["steps"] < 1), recs["steps"].astype(float))
    low, high = robust_limits(steps.compressed(), default=(1.0, 10.0))
    norm = LogNorm(vmin=low, vmax=high if high > low else 10 * low)
    mesh = draw_map(steps_ax, recs, steps, "viridis", norm, label_size="large")  # as figure3.png
    _log_colorbar(fig, mesh, steps_ax, "steps to |ε| ≤ tol" if tol is None else f"steps to |ε| ≤ {tol:g}",
                  extension(steps.compressed(), norm.vmin, norm.vmax))
    zero = converged & (recs["steps"] == 0)
    mark_cells(steps_ax, recs, zero, ZERO_STEPS_COLOUR)
    steps_ax.set_title("time to converge")

    for ax in (sharp_ax, ratio_ax, steps_ax):
        mark_cells(ax, recs, outcome == DIVERGED, DIVERGED_COLOUR)
        mark_cells(ax, recs, outcome == MAX_STEPS, MAX_STEPS_COLOUR, MAX_STEPS_HATCH)
        _theory_lines(ax, recs)
        mark_start_on_minimum(ax, recs)
    budget = "" if max_steps is None else f" in T = {max_steps} steps"
    handles = [
        Line2D([], [], color=THRESHOLD_COLOUR, lw=1.8, ls=":",
               label=f"η = 2/(L Φ^(2-2/L)) = {float(recs['stability_threshold']):.4g}: no stable minimum beyond"),
        Line2D([], [], color=GF_LINE_COLOUR, lw=1.8, ls="--", label="η = 2/S_GF (S_GF: sharpness where GF ends)"),
        Patch(color=DIVERGED_COLOUR, label="diverged"),
        Patch(facecolor=MAX_STEPS_COLOUR, hatch=MAX_STEPS_HATCH, edgecolor="0.2", label=f"not converged{budget}"),
        *steps_ax.get_legend_handles_labels()[0],  # the scale where eps(0) = 0, if the grid crosses one
    ]
    if zero.any():
        handles.append(Patch(facecolor=ZERO_STEPS_COLOUR, label="0 steps (starts converged)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="medium")
    fig.suptitle(f"GD on the depth-{depth} scalar chain w_1···w_{depth}, Φ = {phi:g}: step size × initial scale",
                 fontsize="x-large")
    return fig


def chain_sharpness_curves(recs: dict):
    """Final sharpness versus eta for a few initial scales, against S_GF, 2/eta and L Phi^(2-2/L); every
    per-scale mark in its scale's colour, in the legend too."""
    fig = new_figure((10.5, 5.6))
    ax = fig.subplots()
    eta, scale = recs["eta"], recs["scale"]
    least = float(recs["least_sharpness"])
    rows = np.unique(np.linspace(0, scale.size - 1, N_SHARPNESS_CURVES).round().astype(int))
    colours = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, rows.size))
    gf_lines, crosses = [], []
    for j, colour in zip(rows, colours, strict=True):
        converged = recs["outcome"][:, j] == CONVERGED
        sharp = recs["final_sharpness"][:, j]
        ax.plot(eta[converged], sharp[converged], ".", ms=4, color=colour, label=f"scale {scale[j]:.3g}")
        crosses.append(ax.plot(eta[~converged], sharp[~converged], "x", ms=3, alpha=0.4, color=colour)[0])
        gf_lines.append(ax.axhline(recs["gf_sharpness"][j], color=colour, ls="--", lw=1))
    ax.plot(eta, 2.0 / eta, "k-", lw=1.2, label="2/η (stability limit)")
    ax.axhline(least, color="grey", lw=1.2, label=f"L Φ^(2-2/L) = {least:.4g} (flattest minimum)")
    ax.axvline(float(recs["stability_threshold"]), color=THRESHOLD_COLOUR, ls=":", lw=1.4,
               label="η = 2/(L Φ^(2-2/L))")
    log_axis(ax, "x", eta)
    ax.set_yscale("log")
    # No minimum is flatter than L Phi^(2-2/L); the range covers the converged runs and S_GF.
    converged = recs["final_sharpness"][:, rows][recs["outcome"][:, rows] == CONVERGED]
    top = max(np.nanmax(recs["gf_sharpness"][rows]), converged.max() if converged.size else least)
    ax.set_ylim(0.8 * least, 1.5 * top)
    readable_log_ticks(ax.yaxis, 0.8 * least, 1.5 * top)
    ax.set_xlabel("step size η")
    ax.set_ylabel("final sharpness (largest Hessian eigenvalue)")
    ax.set_title(f"depth {int(recs['depth'])}: final sharpness against S_GF, 2/η and the flattest minimum")
    handles, labels = ax.get_legend_handles_labels()
    handles += [tuple(gf_lines), tuple(crosses)]
    labels += ["S_GF of each scale (dashed)", "not converged (state at T)"]
    fig.legend(handles, labels, fontsize="small", loc="outside right upper",
               handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})
    return fig


def _theory_lines(ax, recs):
    ax.axvline(float(recs["stability_threshold"]), color=THRESHOLD_COLOUR, lw=1.8, ls=":")
    ax.plot(2.0 / recs["gf_sharpness"], recs["scale"], color=GF_LINE_COLOUR, lw=1.8, ls="--")


def _log_colorbar(fig, mesh, ax, label, extend="neither"):
    bar = fig.colorbar(mesh, ax=ax, label=label, extend=extend)
    readable_log_ticks(bar.ax.yaxis, mesh.norm.vmin, mesh.norm.vmax)
    return bar
