"""The paper's Figure 3 from a sweep's records, plus final sharpness against step size.

x is the step size eta, y the initial scale (log axes when the grid is log-spaced). Theory lines drawn
on the maps, for a process whose stability threshold is c/eta (GD: c = 2; momentum: docs/theory.md section
9): eta = c/lam_GF (edge of stability) and eta = c/(2 phi) (no stable minimum beyond: for GD 1/phi, chaos);
for GD also the Theorem-1 bound eta < min(1/(2|eps0|), 2/sqrt(lam0^2 + 4 phi^2)).
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm, SymLogNorm, TwoSlopeNorm
from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS
from shallownet.sweep.results import SweptProcess

DIVERGED_COLOUR = "black"
MAX_STEPS_COLOUR = "#d9d9d9"
N_SHARPNESS_CURVES = 5
MAP_YLABEL = "initial scale s  (λ(0) = 2 s² for the imbalanced init)"
ETA_LAMBDA0 = (0.5, 1.0, 2.0)  # lines of constant eta * lambda(0): the caption reasons in this product


def figure3(recs: dict, phi: float, max_steps: int, tol: float, process: SweptProcess):
    """Left: Q(T)/Q(0); right: steps to reach |eps| <= tol. Diverged and unconverged cells marked."""
    fig = Figure(figsize=(13, 5.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    outcome = recs["outcome"]

    ratio = np.ma.masked_where(outcome == DIVERGED, recs["imbalance_ratio"])
    low = min(float(ratio.min()), -1e-3) if ratio.count() else -1.0
    high = float(ratio.max()) if ratio.count() else 1.0
    if high <= 1.0:  # GD: P <= 1 always, and the interest is in [low, 1]
        norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=1.0)
    else:  # momentum can grow |Q| many-fold as well: linear inside [-1, 1], logarithmic beyond
        norm = SymLogNorm(linthresh=1.0, vmin=-max(-low, high), vmax=max(-low, high))
    mesh = draw_map(left, recs, ratio, "RdBu_r", norm, MAP_YLABEL)
    fig.colorbar(mesh, ax=left, label="Q(T) / Q(0)" + (" = P" if process.is_gd else " = α_T γ_T"))
    hatch_cells(left, recs, outcome == MAX_STEPS)  # P there is the state at T, often about 0: not white's 0
    left.set_title("imbalance kept by GD: Q(T)/Q(0) = Π (1 − η² ε_t²)" if process.is_gd
                   else f"imbalance kept by {process.name}: Q(T)/Q(0)")

    steps = np.ma.masked_where(outcome != CONVERGED, recs["steps"].astype(float))
    steps = np.ma.masked_less(steps, 1)  # runs that start converged have no place on a log scale
    reached = steps.compressed()  # a grid where nothing converged still gets a valid colour scale
    low = float(reached.min()) if reached.size else 1.0
    mesh = draw_map(right, recs, steps, "viridis",
                    LogNorm(vmin=low, vmax=max(float(reached.max()) if reached.size else max_steps, 10 * low)),
                    MAP_YLABEL)
    fig.colorbar(mesh, ax=right, label=f"steps to |ε| ≤ {tol:g}")
    mark_cells(right, recs, outcome == MAX_STEPS, MAX_STEPS_COLOUR)
    right.set_title("time to converge")
    right.set_ylabel("initial scale s")

    for ax in (left, right):
        mark_cells(ax, recs, outcome == DIVERGED, DIVERGED_COLOUR)
        _eta_lambda0_lines(ax, recs)
        _theory_lines(ax, recs, phi, process)
    handles, _ = right.get_legend_handles_labels()
    handles += [Patch(color=DIVERGED_COLOUR, label="diverged"),
                Patch(facecolor=MAX_STEPS_COLOUR, hatch="///", edgecolor="0.35",
                      label=f"not converged in T = {max_steps} steps (hatched on the left)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small")
    fig.suptitle(f"{process.name} on the shallow linear net, Φ = {phi:g}: step size × initial scale")
    return fig


def sharpness_panel(recs: dict, phi: float, process: SweptProcess):
    """Final sharpness versus eta for a few initial scales, against lam_GF, 2/eta and 2 phi."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    eta, scale = recs["eta"], recs["scale"]
    rows = np.unique(np.linspace(0, scale.size - 1, N_SHARPNESS_CURVES).round().astype(int))
    colours = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, rows.size))
    finite = recs["final_sharpness"][np.isfinite(recs["final_sharpness"])]
    top = 2 * max(recs["norm_gf"].max(), 2 * phi)
    markers = ("o", "s", "^", "D", "v", "P", "X")
    for n, (j, colour) in enumerate(zip(rows, colours, strict=True)):
        converged = recs["outcome"][:, j] == CONVERGED
        sharp = np.where(converged, recs["final_sharpness"][:, j], np.nan)  # gaps where it did not converge
        ax.plot(eta, sharp, "-", lw=1.2, color=colour, marker=markers[n % len(markers)], ms=3.5,
                markevery=max(1, eta.size // 12), label=f"s = {scale[j]:.3g} (λ(0) = {recs['norm0'][j]:.3g})")
        diverged = recs["outcome"][:, j] == DIVERGED
        ax.plot(eta[diverged], np.full(diverged.sum(), top * 0.93), "|", ms=6, color=colour)
        ax.axhline(recs["norm_gf"][j], color=colour, ls="--", lw=1)
    c = process.constant
    ax.plot(eta, c / eta, "k-", lw=1.2, label=f"{c:.3g}/η (stability limit)")
    ax.axhline(2.0 * phi, color="grey", lw=1.2, label="2Φ (flattest minimum)")
    ax.axvline(c / (2 * phi), color="grey", ls=":", lw=1.2, label=f"η = {c / 2:.3g}/Φ")
    ax.plot([], [], "k--", lw=1, label="λ_GF of each scale (dashed)")
    ax.plot([], [], "k|", ms=6, label="diverged (ticks along the top)")
    log_axis(ax, "x", eta)
    ax.set_yscale("log")
    if finite.size:
        low = 0.5 * min(finite.min(), 2 * phi)
        ax.set_ylim(low, top)
        readable_log_ticks(ax.yaxis, low, top)
    ax.set_xlabel("step size η")
    ax.set_ylabel("sharpness at the end (largest Hessian eigenvalue)")
    ax.set_title(f"{process.name}: final sharpness against λ_GF and {c:.3g}/η\n"
                 "(converged runs; gaps: not converged)")
    ax.legend(fontsize="x-small", loc="center left")
    return fig


def draw_map(ax, recs, values, cmap, norm, ylabel="initial scale s", label_size=None):
    """values [eta, scale] as coloured cells over step size (x) and initial scale (y), on log axes where
    the grid is log-spaced."""
    mesh = ax.pcolormesh(recs["eta"], recs["scale"], values.T, cmap=cmap, norm=norm, shading="nearest")
    log_axis(ax, "x", recs["eta"])
    log_axis(ax, "y", recs["scale"])
    ax.set_xlabel("step size η", fontsize=label_size)
    ax.set_ylabel(ylabel, fontsize=label_size)
    ax.set_xlim(recs["eta"][0], recs["eta"][-1])
    ax.set_ylim(recs["scale"][0], recs["scale"][-1])
    return mesh


def mark_cells(ax, recs, where, colour):
    """Paint the cells where `where` holds in one flat colour."""
    if where.any():
        ax.pcolormesh(recs["eta"], recs["scale"], np.ma.masked_where(~where, where).T.astype(float),
                      cmap=ListedColormap([colour]), shading="nearest")


def hatch_cells(ax, recs, where):
    """Hatch the cells where `where` holds, keeping their colour visible underneath."""
    if where.any():
        ax.contourf(recs["eta"], recs["scale"], where.T.astype(float), levels=[0.5, 1.5], colors="none",
                    hatches=["///"])


def _eta_lambda0_lines(ax, recs):
    """Lines of constant eta * lambda(0), the caption's variable: eta lambda(0) = 0.5, 1, 2."""
    for n, product in enumerate(ETA_LAMBDA0):
        ax.plot(product / recs["norm0"], recs["scale"], color="0.35", lw=0.8, ls="-.",
                label=f"ηλ(0) = {', '.join(f'{p:g}' for p in ETA_LAMBDA0)} (left to right)" if n == 0 else None)


def _theory_lines(ax, recs, phi, process: SweptProcess):
    scale, c = recs["scale"], process.constant
    if process.is_gd:
        ax.plot(recs["theorem1_max_lr"], scale, color="cyan", lw=1.6, label="Theorem-1 bound")
    ax.plot(c / recs["norm_gf"], scale, color="orange", lw=1.6, ls="--", label=f"η = {c:.3g}/λ_GF")
    ax.axvline(c / (2 * phi), color="magenta", lw=1.6, ls=":", label=f"η = {c / 2:.3g}/Φ")


def log_axis(ax, which, values):
    """Log scale for log-spaced values, with ticks at 1, 2, 5 x 10^k written as plain numbers."""
    if log_spaced(values):
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        readable_log_ticks(ax.xaxis if which == "x" else ax.yaxis, values.min(), values.max())


def readable_log_ticks(axis, low, high):
    """Ticks at 1, 2, 5 x 10^k over wide ranges, denser over ranges of about a decade or less, labelled
    0.1, 0.2, 0.5 rather than 10^-1 (readable in a paper)."""
    decades = np.log10(high / low) if low > 0 and high > low else 1.0
    subs = (1.0, 2.0, 5.0) if decades > 1.6 else (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    axis.set_major_locator(LogLocator(base=10.0, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def log_spaced(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return values.size > 2 and bool((values > 0).all()) and bool(
        np.allclose(np.diff(np.log(values)), np.log(values[1] / values[0])))
