"""Figures of a real-net sweep, over (eta * lambda_0, initial scale) for the first seed of the grid:
the phase map (regions named, the lines eta lambda_0 = 2 and 4), final sharpness over 2/eta, steps and the
per-unit balance ratio."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm
from matplotlib.patches import Patch

from shallownet.plots import new_figure
from shallownet.sweep.figures import readable_log_ticks
from shallownet.sweep.regions import REGIONS

REGION_COLOURS = {"lazy": "#4daf4a", "catapult": "#ff7f00", "edge_of_stability": "#377eb8", "diverged": "black"}
CATAPULT_WINDOW = (2.0, 4.0)  # eta lambda_0 between these: the uv model's catapult (Lewkowycz et al. 2020)
N_CURVES = 5


def real_figures(recs: dict, title: str, max_steps: int, margin: float) -> dict:
    return {"phase_map": phase_map(recs, title, margin), "sharpness": sharpness_figure(recs, title),
            "steps": value_map(recs, "steps", title, f"steps taken (budget {max_steps})"),
            "balance": value_map(recs, "balance_ratio", title, "balance ratio: final / initial mean_j |C_j|")}


def _mesh(recs: dict, values: np.ndarray):
    """(x, y, values) as [n_scale, n_lr] arrays of the first seed: x = eta lambda_0 per cell, y = the scale."""
    x = recs["eta_lambda0"][:, :, 0].T
    y = np.broadcast_to(recs["scale"][:, None], x.shape)
    return x, y, values[:, :, 0].T


def _axes(ax, recs):
    ax.set_xscale("log")
    if recs["scale"].size > 1 and np.allclose(np.diff(np.log(recs["scale"])), np.log(recs["scale"][1] /
                                                                                        recs["scale"][0])):
        ax.set_yscale("log")
        readable_log_ticks(ax.yaxis, float(recs["scale"].min()), float(recs["scale"].max()))  # 0.5, not 5x10^-1
    for line in CATAPULT_WINDOW:
        ax.axvline(line, color="white", lw=3.0)
        ax.axvline(line, color="red", lw=1.4, ls="--")
    ax.set_xlabel("η λ₀  (step size × initial sharpness; dashed: η λ₀ = 2 and 4)")
    ax.set_ylabel("initial scale (model.init_scale)")


def phase_map(recs: dict, title: str, margin: float):
    fig = new_figure((9.5, 5.6))
    ax = fig.subplots()
    region = recs["region"].astype(float)
    region[region < 0] = np.nan
    x, y, c = _mesh(recs, region)
    cmap = ListedColormap([REGION_COLOURS[name] for name in REGIONS])
    ax.pcolormesh(x, y, c, cmap=cmap, norm=BoundaryNorm(np.arange(len(REGIONS) + 1) - 0.5, len(REGIONS)),
                  shading="nearest")
    _axes(ax, recs)
    for code, name in enumerate(REGIONS):  # the region's name at the middle of its cells
        where = c == code
        if where.sum() >= 2:
            ax.text(np.exp(np.median(np.log(x[where]))), float(np.median(y[where])), name.replace("_", " "),
                    ha="center", va="center", fontsize=10, color="white",
                    bbox={"facecolor": REGION_COLOURS[name], "edgecolor": "white", "alpha": 0.85, "pad": 2})
    counts = [f"{name.replace('_', ' ')} ({int((recs['region'] == code).sum())})" for code, name in enumerate(REGIONS)]
    ax.legend(handles=[Patch(color=REGION_COLOURS[n], label=lab) for n, lab in zip(REGIONS, counts, strict=True)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), title="region (runs, all seeds)")
    seeds = recs["seed"]
    ax.set_title(f"{title}\nphase map, seed {int(seeds[0])} of {seeds.size}; edge of stability: ends with "
                 f"η·sharpness ≥ {2 * (1 - margin):.2g}\ncatapult: the loss rose above its start and ends below it",
                 fontsize=10)
    return fig


def sharpness_figure(recs: dict, title: str):
    """Final sharpness over 2/eta against eta lambda_0, per scale: 1 is GD's stability limit, the diagonal
    eta lambda_0 / 2 is where a run that kept its initial sharpness would sit."""
    fig = new_figure((9.5, 5.6))
    ax = fig.subplots()
    scale = recs["scale"]
    rows = np.unique(np.linspace(0, scale.size - 1, min(N_CURVES, scale.size)).round().astype(int))
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, rows.size))
    x_all = recs["eta_lambda0"][:, :, 0]
    for j, colour in zip(rows, colours, strict=True):
        x = x_all[:, j]
        ratio = recs["final_sharpness"][:, j, 0] * recs["eta"] / 2
        ratio = np.where(recs["region"][:, j, 0] == REGIONS.index("diverged"), np.nan, ratio)
        ax.plot(x, ratio, "o-", ms=4, color=colour, label=f"scale {scale[j]:.3g}")
    finite = x_all[np.isfinite(x_all) & (x_all > 0)]
    span = np.geomspace(finite.min(), finite.max(), 50) if finite.size else np.geomspace(0.1, 10, 50)
    ax.plot(span, span / 2, "k:", lw=1.2, label="η λ₀ / 2 (sharpness unchanged)")
    ax.axhline(1.0, color="grey", lw=1.2, label="sharpness = 2/η")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for line in CATAPULT_WINDOW:
        ax.axvline(line, color="red", lw=1.0, ls="--")
    ax.set_xlabel("η λ₀")
    ax.set_ylabel("final sharpness / (2/η)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{title}\nfinal sharpness over 2/η (non-diverged runs, seed {int(recs['seed'][0])})")
    return fig


def value_map(recs: dict, name: str, title: str, label: str):
    fig = new_figure((9.5, 5.6))
    ax = fig.subplots()
    values = recs[name].astype(float)
    values = np.where((recs["region"] == REGIONS.index("diverged")) | (values <= 0), np.nan, values)
    x, y, c = _mesh(recs, values)
    finite = c[np.isfinite(c)]
    norm = LogNorm(finite.min(), max(finite.max(), finite.min() * 1.0001)) if finite.size else None
    mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(c), cmap="viridis", norm=norm, shading="nearest")
    ax.set_facecolor("black")
    fig.colorbar(mesh, ax=ax, label=label)
    _axes(ax, recs)
    ax.set_title(f"{title}\n{label} (black: diverged or not measured), seed {int(recs['seed'][0])}")
    return fig
