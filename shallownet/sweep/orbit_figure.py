"""The orbit map of a GD sweep: over step size (x) and initial scale (y), what each run that reached its budget
does in the orbit.steps steps after it (orbit_fields.py): its period, or chaos (no period and a positive
Lyapunov exponent); runs that converged or diverged within the budget in their own flat colours."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch

from shallownet.plots import new_figure
from shallownet.sweep.engine import CONVERGED, DIVERGED
from shallownet.sweep.figures import DIVERGED_COLOUR, MAP_YLABEL, draw_map

# (label, colour) of each class, in the order of their codes
CLASSES = (
    ("converged within the budget", "#ffffff"),
    ("diverged", DIVERGED_COLOUR),
    ("period 1 (a fixed point not reached to train.tol: a slow minimum, or a saddle such as 0)", "#c7e9c0"),
    ("period 2", "#74c476"),
    ("period 4", "#31a354"),
    ("period 8 or more, a power of 2", "#006d2c"),
    ("another period (3, 5, 6, ...)", "#6baed6"),
    ("no period, λ > 0 (chaos)", "#de2d26"),
    ("no period, λ ≤ 0 (not settled) or diverged after the budget", "#bdbdbd"),
)


def orbit_classes(recs: dict) -> np.ndarray:
    """The class code (CLASSES) of every run."""
    period, exponent, outcome = recs["orbit_period"], recs["lyapunov"], recs["outcome"]
    power_of_two = (period > 0) & ((period & (period - 1)) == 0)
    with np.errstate(invalid="ignore"):
        chaotic = exponent > 0
    return np.select(
        [outcome == CONVERGED, outcome == DIVERGED, period == 1, period == 2, period == 4,
         power_of_two & (period >= 8), period > 0, chaotic],
        np.arange(8), default=8)


def orbit_map(recs: dict, least_sharpness: float, max_steps: int, n_steps: int, title: str,
              ylabel: str = MAP_YLABEL):
    """The map (module docstring), with eta = 2 / least_sharpness (the flattest minimum's sharpness: 2 Phi for the
    shallow net) beyond which GD has no stable minimum, and the classes present in the legend with their counts."""
    fig = new_figure((10, 7.4))
    ax = fig.subplots()
    codes = orbit_classes(recs)
    labels, colours = zip(*CLASSES, strict=True)
    draw_map(ax, recs, codes.astype(float), ListedColormap(colours),
             BoundaryNorm(np.arange(len(CLASSES) + 1) - 0.5, len(CLASSES)), ylabel)
    if least_sharpness > 0:
        ax.axvline(2.0 / least_sharpness, color="magenta", lw=1.4, ls=":",
                   label=f"η = 2/S_min = {2 / least_sharpness:.3g} (S_min = {least_sharpness:.3g}, the flattest "
                         "minimum: no stable minimum beyond)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(facecolor=colours[c], edgecolor="0.3", label=f"{labels[c]}: {int((codes == c).sum())}")
                for c in range(len(CLASSES)) if (codes == c).any()]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small")
    ax.set_title(f"the {n_steps} GD steps after the budget T = {max_steps} of each run that reached it",
                 fontsize="medium")
    fig.suptitle(title)
    return fig
