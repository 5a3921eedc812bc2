"""The paper's Figure 3 from a sweep's records, plus final sharpness against step size.

x is the step size eta, y the initial scale (log axes when the grid is log-spaced). Theory lines drawn
on the maps, for a process whose stability threshold is c/eta (GD: c = 2; momentum: docs/theory.md section
9): eta = c/lam_GF (edge of stability) and eta = c/(2 phi) (no stable minimum beyond: for GD 1/phi, chaos);
for GD also the Theorem-1 bound eta < min(1/(2|eps0|), 2/sqrt(lam0^2 + 4 phi^2)).
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import ListedColormap, LogNorm, SymLogNorm, TwoSlopeNorm
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from shallownet.plots import new_figure
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS
from shallownet.sweep.results import SweptProcess

DIVERGED_COLOUR = "black"
MAX_STEPS_COLOUR = "#a6a6a6"  # mid grey, hatched on both maps: apart from white (P = 0 on the left)
MAX_STEPS_HATCH = "///"
ZERO_STEPS_COLOUR = "#e7298a"  # runs that start converged (0 steps, off a log scale)
ROBUST_PERCENTILES = (1.0, 99.0)  # colour-bar limits: a few isolated cells must not set the whole scale
N_SHARPNESS_CURVES = 5
MAP_YLABEL = "initial scale s  (λ(0) = 2 s² for the imbalanced init)"
ETA_LAMBDA0 = (0.5, 1.0, 2.0)  # lines of constant eta * lambda(0): the caption reasons in this product
NEAR_OVERLAP = 0.1  # the Theorem-1 and 2/lam_GF curves "overlap" where within 10% of each other


def figure3(recs: dict, phi: float, max_steps: int, tol: float, process: SweptProcess):
    """Left: Q(T)/Q(0); right: steps to reach |eps| <= tol. Diverged and unconverged cells marked the same
    way on both maps; the steps' colour limits are their 1st-99th percentiles (arrows on the bar: cells beyond)."""
    fig = new_figure((13, 6.2))
    left, right = fig.subplots(1, 2)
    outcome = recs["outcome"]

    # The state at T of a run that did not converge is no result. The full range of P is kept (its extremes
    # are the result: an imbalance flipped or grown); only the steps map below takes robust limits.
    ratio = np.ma.masked_where(outcome != CONVERGED, recs["imbalance_ratio"])
    low = min(float(ratio.min()), -1e-3) if ratio.count() else -1.0
    high = float(ratio.max()) if ratio.count() else 1.0
    if process.is_gd:  # P <= 1 always, and the interest is in [low, 1]
        norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=1.0)
    else:  # momentum can grow |Q| many-fold as well: linear inside [-1, 1], logarithmic beyond
        bound = max(-low, high, 1.0)
        norm = SymLogNorm(linthresh=1.0, vmin=-bound, vmax=bound)
    mesh = draw_map(left, recs, ratio, "RdBu_r", norm, MAP_YLABEL)
    fig.colorbar(mesh, ax=left,
                 label="Q(T) / Q(0)" + (" = P" if process.is_gd else " = α_T γ_T") + "  (white: 0, collapsed)")
    left.set_title("imbalance kept by GD: Q(T)/Q(0) = Π (1 − η² ε_t²)" if process.is_gd
                   else f"imbalance kept by {process.name}: Q(T)/Q(0)")

    converged_steps = (outcome == CONVERGED) & (recs["steps"] >= 1)  # 0 steps has no place on a log scale
    steps = np.ma.masked_where(~converged_steps, recs["steps"].astype(float))
    low, high = robust_limits(steps.compressed(), default=(1.0, float(max_steps)))
    norm = LogNorm(vmin=low, vmax=high if high > low else 10 * low)  # a one-value grid still gets a scale
    mesh = draw_map(right, recs, steps, "viridis", norm, MAP_YLABEL)
    bar = fig.colorbar(mesh, ax=right, extend=extension(steps.compressed(), norm.vmin, norm.vmax),
                       label=f"steps to |ε| ≤ {tol:g}")
    readable_log_ticks(bar.ax.yaxis, norm.vmin, norm.vmax)
    right.set_title("time to converge")

    zero = (outcome == CONVERGED) & (recs["steps"] == 0)
    for ax in (left, right):
        mark_cells(ax, recs, outcome == DIVERGED, DIVERGED_COLOUR)
        mark_cells(ax, recs, outcome == MAX_STEPS, MAX_STEPS_COLOUR, MAX_STEPS_HATCH)
        mark_cells(ax, recs, zero, ZERO_STEPS_COLOUR)
        _eta_lambda0_lines(ax, recs, labels=ax is left)
        _theory_lines(ax, recs, phi, process)
        mark_start_on_minimum(ax, recs)
    handles, _ = right.get_legend_handles_labels()
    handles += [Patch(color=DIVERGED_COLOUR, label="diverged"),
                Patch(facecolor=MAX_STEPS_COLOUR, hatch=MAX_STEPS_HATCH, edgecolor="0.2",
                      label=f"not converged in T = {max_steps} steps")]
    if zero.any():
        handles.append(Patch(color=ZERO_STEPS_COLOUR, label="0 steps (starts converged)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small")
    fig.suptitle(f"{process.name} on the shallow linear net, Φ = {phi:g}: step size × initial scale")
    return fig


def robust_limits(values: np.ndarray, default=(-1.0, 1.0)) -> tuple[float, float]:
    """The ROBUST_PERCENTILES of the finite values (default when there are none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return default
    low, high = np.percentile(values, ROBUST_PERCENTILES)
    return float(low), float(high)


def extension(values: np.ndarray, vmin: float, vmax: float) -> str:
    """The colour bar's `extend`: an arrow at each end that some values lie beyond."""
    below, above = bool((values < vmin).any()), bool((values > vmax).any())
    return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (below, above)]


def sharpness_panel(recs: dict, phi: float, process: SweptProcess):
    """Final sharpness versus eta for a few initial scales, against lam_GF, 2/eta and 2 phi; the legend
    outside the axes, every per-scale mark in its scale's colour (legend entries show all the colours)."""
    fig = new_figure((10, 5.2))
    ax = fig.subplots()
    eta, scale = recs["eta"], recs["scale"]
    rows = np.unique(np.linspace(0, scale.size - 1, N_SHARPNESS_CURVES).round().astype(int))
    colours = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, rows.size))
    top = 2 * max(recs["norm_gf"].max(), 2 * phi)
    markers = ("o", "s", "^", "D", "v", "P", "X")
    shown, gf_lines, ticks = [], [], []
    for n, (j, colour) in enumerate(zip(rows, colours, strict=True)):
        converged = recs["outcome"][:, j] == CONVERGED
        sharp = np.where(converged, recs["final_sharpness"][:, j], np.nan)  # gaps where it did not converge
        shown.append(sharp[converged])
        ax.plot(eta, sharp, "-", lw=1.2, color=colour, marker=markers[n % len(markers)], ms=3.5,
                markevery=max(1, eta.size // 12), label=f"s = {scale[j]:.3g} (λ(0) = {recs['norm0'][j]:.3g})")
        diverged = recs["outcome"][:, j] == DIVERGED
        ticks.append(ax.plot(eta[diverged], np.full(diverged.sum(), top * 0.93), "|", ms=6, color=colour)[0])
        gf_lines.append(ax.axhline(recs["norm_gf"][j], color=colour, ls="--", lw=1))
    c = process.constant
    ax.plot(eta, c / eta, "k-", lw=1.2, label=f"{c:.3g}/η (stability limit)")
    if phi > 0:  # Phi = 0 (the uv model): minima of every sharpness, a stable one at any eta
        ax.axhline(2.0 * phi, color="grey", lw=1.2, label="2Φ (flattest minimum)")
        ax.axvline(c / (2 * phi), color="grey", ls=":", lw=1.2, label=f"η = {c / 2:.3g}/Φ")
    log_axis(ax, "x", eta)
    ax.set_yscale("log")
    reached = np.concatenate(shown)
    reached = reached[reached > 0]
    floor = 2 * phi if phi > 0 else (float(reached.min()) if reached.size else c / eta.max())
    low = 0.9 * min(float(reached.min()) if reached.size else floor, floor)  # no minimum is below 2 Phi
    ax.set_ylim(low, top)
    readable_log_ticks(ax.yaxis, low, top)
    ax.set_xlabel("step size η")
    ax.set_ylabel("sharpness at the end (largest Hessian eigenvalue)")
    ax.set_title(f"{process.name}: final sharpness against λ_GF and {c:.3g}/η\n"
                 "(converged runs; gaps: not converged)")
    handles, labels = ax.get_legend_handles_labels()
    handles += [tuple(gf_lines), tuple(ticks)]
    labels += ["λ_GF of each scale (dashed)", "diverged (ticks along the top)"]
    fig.legend(handles, labels, loc="outside right upper", fontsize="small",
               handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})
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


def mark_cells(ax, recs, where, colour, hatch=None):
    """Paint the cells where `where` holds in one flat colour, hatched if `hatch` (then as pcolor's
    polygons: a QuadMesh draws no hatch; not antialiased: no seams between the cells)."""
    if where.any():
        cells = np.ma.masked_where(~where, where).T.astype(float)
        if hatch is None:
            ax.pcolormesh(recs["eta"], recs["scale"], cells, cmap=ListedColormap([colour]), shading="nearest")
        else:
            ax.pcolor(recs["eta"], recs["scale"], cells, cmap=ListedColormap([colour]), shading="nearest",
                      hatch=hatch, edgecolor="none", antialiased=False)


def _eta_lambda0_lines(ax, recs, labels: bool):
    """Lines of constant eta * lambda(0), the caption's variable: eta lambda(0) = 0.5, 1, 2, black with a
    white edge (visible on dark red and on dark blue alike), each labelled where it leaves the map's right."""
    halo = [patheffects.withStroke(linewidth=2.6, foreground="white")]
    eta_max = recs["eta"][-1]
    for n, product in enumerate(ETA_LAMBDA0):
        eta = product / recs["norm0"]  # falls as the scale grows
        ax.plot(eta, recs["scale"], color="black", lw=1.0, ls="-.", path_effects=halo,
                label=f"ηλ(0) = {', '.join(f'{p:g}' for p in ETA_LAMBDA0)} (dash-dot, labelled at the right)"
                if n == 0 else None)
        if labels and eta[-1] < eta_max < eta[0]:
            exit_scale = np.interp(np.log(eta_max), np.log(eta[::-1]), recs["scale"][::-1])
            ax.annotate(f"{product:g}", (eta_max, exit_scale), xytext=(-2, 2), textcoords="offset points",
                        ha="right", va="bottom", fontsize=8, path_effects=halo)


def _theory_lines(ax, recs, phi, process: SweptProcess):
    scale, c = recs["scale"], process.constant
    edge = c / recs["norm_gf"]
    if process.is_gd:
        bound = recs["theorem1_max_lr"]
        near = np.abs(bound - edge) <= NEAR_OVERLAP * edge
        label = "Theorem-1 bound"
        if near.any():  # at large scales both are about 2/lambda(0): say so, or one curve seems missing
            label += (f" (within {100 * float(np.max(np.abs(bound - edge)[near] / edge[near])):.0f}% of "
                      f"{c:.3g}/λ_GF for s ≥ {float(scale[near].min()):.2g}: they overlap)")
        ax.plot(bound, scale, color="cyan", lw=2.4, label=label)
    ax.plot(edge, scale, color="orange", lw=1.6, ls="--", label=f"η = {c:.3g}/λ_GF")
    if phi > 0:
        ax.axvline(c / (2 * phi), color="magenta", lw=1.6, ls=":", label=f"η = {c / 2:.3g}/Φ")


def mark_start_on_minimum(ax, recs):
    """The scale whose start lies on the minima (eps(0) = 0, from the sign change of eps(0) between rows),
    arrowheads at both edges: runs from near there need fewer steps (|eps(0)| small), a thin line of fewer
    steps across the right map that is data, not an artefact."""
    eps0, scale = recs["residual0"], recs["scale"]
    for n, j in enumerate(np.flatnonzero(np.sign(eps0[:-1]) * np.sign(eps0[1:]) < 0)):
        s = scale[j] + (scale[j + 1] - scale[j]) * eps0[j] / (eps0[j] - eps0[j + 1])
        ax.plot([0.0], [s], transform=ax.get_yaxis_transform(), clip_on=False, ls="none", marker=">", ms=7,
                color="white", mec="black", zorder=6,
                label="s with ε(0) = 0 (starts on a minimum: rows near it take fewer steps)"
                if n == 0 else None)
        ax.plot([1.0], [s], transform=ax.get_yaxis_transform(), clip_on=False, ls="none", marker="<", ms=7,
                color="white", mec="black", zorder=6)


def log_axis(ax, which, values):
    """Log scale for log-spaced values, with ticks at 1, 2, 5 x 10^k written as plain numbers."""
    if log_spaced(values):
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        readable_log_ticks(ax.xaxis if which == "x" else ax.yaxis, values.min(), values.max())


def readable_log_ticks(axis, low, high):
    """Ticks at 1, 2, 5 x 10^k over a few decades (10^k only beyond 4), denser over a decade or less, labelled
    0.1, 0.2, 0.5 rather than 10^-1 (readable in a paper)."""
    decades = np.log10(high / low) if low > 0 and high > low else 1.0
    if decades > 4:  # powers of ten only (LogLocator thins 1, 2, 5 over many decades to nothing)
        subs = (1.0,)
    elif decades > 1.6:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    axis.set_major_locator(LogLocator(base=10.0, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def log_spaced(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return values.size > 2 and bool((values > 0).all()) and bool(
        np.allclose(np.diff(np.log(values)), np.log(values[1] / values[0])))
