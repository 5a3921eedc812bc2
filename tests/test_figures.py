"""Every figure the commands write, drawn on a tiny run: the legend names what is drawn, no text lies outside
the canvas, colour-bar limits are the robust percentiles of what they colour, and the marks of the issue's
list (not converged hatched on both maps, per-scale colours in the legends, the GF star under the GD limits)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from shallownet import events
from shallownet.config import load_config
from shallownet.sweep.engine import CONVERGED, DIVERGED, MAX_STEPS
from shallownet.sweep.figures import MAX_STEPS_COLOUR, figure3, robust_limits, sharpness_panel
from shallownet.sweep.grid import SweepConfig, build_grid
from shallownet.sweep.results import records, swept_process
from shallownet.sweep.runner import compute
from tests.conftest import read_summary

SWEEP = ["grid.lr.num=24", "grid.scale.num=20", "train.max_steps=3000"]


def render(fig):
    """Lay the figure out and draw it as savefig does; returns the renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def drawn_texts(fig) -> list[Text]:
    """The non-empty visible texts that get drawn: tick labels only of ticks inside their axis's view
    (matplotlib keeps, but does not draw, the labels of ticks beyond it)."""
    tick_labels, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                inside = low - 1e-9 * abs(low) <= tick.get_loc() <= high + 1e-9 * abs(high)
                for label in (tick.label1, tick.label2):
                    tick_labels.add(id(label))
                    if inside and ax.get_visible():
                        shown.append(label)
    others = [t for t in fig.findobj(Text) if id(t) not in tick_labels]
    return [t for t in shown + others if t.get_visible() and t.get_text().strip()]


def assert_inside_canvas(fig):
    renderer = render(fig)
    width, height = fig.bbox.width, fig.bbox.height
    outside = []
    for text in drawn_texts(fig):
        box = text.get_window_extent(renderer)
        if not np.isfinite([box.x0, box.y0, box.x1, box.y1]).all():
            continue
        if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
            outside.append((text.get_text(), box.bounds))
    assert not outside, f"text outside the canvas: {outside}"


def legend_labels(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def map_mesh(ax) -> QuadMesh:
    """The value map of a map axes: its first QuadMesh (the marks come after it)."""
    return next(c for c in ax.collections if isinstance(c, QuadMesh))


def hatched_cells(ax) -> int:
    """How many cells are painted in the not-converged grey and hatched."""
    return sum(len(c.get_paths()) for c in ax.collections if isinstance(c, PolyCollection) and c.get_hatch()
               and np.allclose(c.get_facecolor()[0], to_rgba(MAX_STEPS_COLOUR)))


@pytest.fixture(scope="module")
def gd_sweep():
    cfg = load_config(SweepConfig, None, SWEEP)
    grid = build_grid(cfg)
    recs = records(grid, compute(cfg, grid)[1])
    return grid, recs, swept_process(grid)


@pytest.fixture(scope="module")
def momentum_sweep():
    cfg = load_config(SweepConfig, None, [*SWEEP, "optim.method=momentum", "optim.momentum=0.9"])
    grid = build_grid(cfg)
    return grid, records(grid, compute(cfg, grid)[1]), swept_process(grid)


# --- figure3.png and sharpness.png -------------------------------------------------------------------

def test_figure3_marks_and_limits(gd_sweep):
    grid, recs, process = gd_sweep
    outcome = recs["outcome"]
    assert {CONVERGED, DIVERGED, MAX_STEPS} <= set(np.unique(outcome))  # the grid shows every outcome
    fig = figure3(recs, grid.phi, grid.rule.max_steps, grid.rule.tol, process)
    assert_inside_canvas(fig)
    labels = " | ".join(legend_labels(fig))
    for expected in ("Theorem-1 bound (within", "they overlap", "η = 2/λ_GF", "η = 1/Φ", "ηλ(0) = 0.5, 1, 2",
                     "diverged", f"not converged in T = {grid.rule.max_steps} steps", "ε(0) = 0"):
        assert expected in labels
    left, right = fig.axes[:2]  # the colour bars come after the maps
    # the steps' colour limits: the 1st and 99th percentiles of the converged runs' steps, arrows beyond
    steps = recs["steps"][(outcome == CONVERGED) & (recs["steps"] >= 1)].astype(float)
    norm = map_mesh(right).norm
    np.testing.assert_allclose([norm.vmin, norm.vmax], np.percentile(steps, [1, 99]), rtol=1e-12)
    assert map_mesh(right).colorbar.extend == "both"
    # not converged: grey and hatched, cell for cell, on both maps; white (P = 0) is not that grey
    assert hatched_cells(left) == hatched_cells(right) == int((outcome == MAX_STEPS).sum())
    white = np.array(map_mesh(left).cmap(map_mesh(left).norm(0.0)))
    assert np.abs(white - np.array(to_rgba(MAX_STEPS_COLOUR))).max() > 0.2
    assert map_mesh(left).norm.vmax == 1.0 and map_mesh(left).norm.vmin <= recs["imbalance_ratio"][
        outcome == CONVERGED].min()
    # the scale where eps(0) = 0 (the thin line of fewer steps) is marked between the rows it lies between
    eps0, scale = recs["residual0"], recs["scale"]
    (j,) = np.flatnonzero(np.sign(eps0[:-1]) * np.sign(eps0[1:]) < 0)
    marks = [line for line in right.lines if line.get_marker() == ">"]
    assert len(marks) == 1 and scale[j] < marks[0].get_ydata()[0] < scale[j + 1]


def test_figure3_of_momentum_names_its_process_and_threshold(momentum_sweep):
    grid, recs, process = momentum_sweep
    assert process.constant == pytest.approx(3.8) and not process.is_gd
    fig = figure3(recs, grid.phi, grid.rule.max_steps, grid.rule.tol, process)
    assert_inside_canvas(fig)
    labels = " | ".join(legend_labels(fig))
    assert "η = 3.8/λ_GF" in labels and "η = 1.9/Φ" in labels and "Theorem-1" not in labels
    assert "heavy-ball momentum, β = 0.9" in fig.get_suptitle()
    sharp = sharpness_panel(recs, grid.phi, process)
    assert "3.8/η (stability limit)" in legend_labels(sharp)


def test_sharpness_panel_legend_beside_the_data_in_the_curves_colours(gd_sweep):
    grid, recs, process = gd_sweep
    fig = sharpness_panel(recs, grid.phi, process)
    renderer = render(fig)
    assert_inside_canvas(fig)
    (ax,), (legend,) = fig.axes, fig.legends
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    curves = [line for line in ax.lines if line.get_linestyle() == "-" and line.get_label().startswith("s = ")]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    ticks = [line for line in ax.lines if line.get_marker() == "|"]
    assert len(curves) == len(dashed) == len(ticks) >= 3
    for curve, gf, tick in zip(curves, dashed, ticks, strict=True):  # one colour per scale, marks included
        assert to_rgba(curve.get_color()) == to_rgba(gf.get_color()) == to_rgba(tick.get_color())
    assert "diverged (ticks along the top)" in legend_labels(fig)
    # the axis starts just below the flattest minimum 2 Phi or the lowest final sharpness drawn
    lowest = min(2 * grid.phi, np.nanmin(np.where(recs["outcome"] == CONVERGED, recs["final_sharpness"], np.nan)))
    assert 0.85 * lowest < ax.get_ylim()[0] < lowest


def test_robust_limits_are_percentiles_of_the_finite_values():
    values = np.concatenate([np.arange(1.0, 101.0), [np.inf, np.nan]])
    assert robust_limits(values) == pytest.approx((1.99, 99.01))
    assert robust_limits(np.array([np.nan]), default=(3.0, 4.0)) == (3.0, 4.0)


# --- chain_maps.png and chain_sharpness.png ----------------------------------------------------------

def test_chain_figures(gd_sweep):
    from shallownet.sweep.chain import chain_grid, chain_records, run_chain_grid
    from shallownet.sweep.chain_figures import chain_maps, chain_sharpness_curves
    from shallownet.sweep.engine import StopRule

    rule = StopRule(tol=1e-8, divergence_norm=1e12, max_steps=4000)
    grid = chain_grid(np.geomspace(0.01, 1.0, 24), np.geomspace(0.4, 1.6, 20), 3, 1.0, rule)
    recs = chain_records(grid, run_chain_grid(grid))
    fig = chain_maps(recs, rule.max_steps, rule.tol)
    renderer = render(fig)
    assert_inside_canvas(fig)
    sharp_ax, _, steps_ax, _, ratio_bar, _ = fig.axes  # the maps, then their colour bars
    # time to converge in the same colour map, the same way round, as figure3.png's
    shallow = figure3(gd_sweep[1], 1.0, 3000, 1e-8, gd_sweep[2])
    assert map_mesh(steps_ax).cmap.name == map_mesh(shallow.axes[1]).cmap.name
    steps = recs["steps"][(recs["outcome"] == CONVERGED) & (recs["steps"] >= 1)].astype(float)
    norm = map_mesh(steps_ax).norm
    np.testing.assert_allclose([norm.vmin, norm.vmax], np.percentile(steps, [1, 99]), rtol=1e-12)
    # the imbalance bar's label fits along its bar (it ran past it, crowded)
    label = ratio_bar.yaxis.label.get_window_extent(renderer)
    assert label.height <= ratio_bar.get_window_extent(renderer).height
    assert hatched_cells(sharp_ax) == hatched_cells(steps_ax) == int((recs["outcome"] == MAX_STEPS).sum())
    labels = " | ".join(legend_labels(fig))
    assert "no stable minimum beyond" in labels and "η = 2/S_GF" in labels and "not converged" in labels
    curves = chain_sharpness_curves(recs)
    assert_inside_canvas(curves)
    assert {"S_GF of each scale (dashed)", "not converged (state at T)"} <= set(legend_labels(curves))


# --- figure1.png -------------------------------------------------------------------------------------

def test_figure1_legend_and_markers():
    from shallownet.figure1 import Figure1Config, compute_paths, draw, validate_figure1

    cfg = load_config(Figure1Config, None, ["train.max_steps=200"])
    validate_figure1(cfg)
    fig = draw(cfg, compute_paths(cfg))
    assert_inside_canvas(fig)
    labels = " | ".join(legend_labels(fig))
    for expected in ("a² − b² = c", "minima ab = Φ", "GD η = 0.1", "gradient flow", "GF limit", "last point",
                     "start"):
        assert expected in labels
    (ax,) = fig.axes
    stars = [line for line in ax.lines if line.get_marker() == "*" and line.get_xdata().size]
    ends = [line for line in ax.lines if line.get_marker() == "D" and line.get_xdata().size]
    assert len(stars) == len(cfg.inits) and ends
    # an open star under the last points: a GD limit next to the GF limit is not hidden
    assert all(star.get_markerfacecolor() == "none" for star in stars)
    assert max(star.get_zorder() for star in stars) < min(end.get_zorder() for end in ends)


# --- compare.png and eos.png -------------------------------------------------------------------------

COMPARE = ["model.width=4", "processes=[{method: gd, lr: 0.2}, {method: gd, lr: 0.45}, {method: flow}]",
           "train.max_steps=300"]


@pytest.fixture
def compare_run(cli):
    code, out, err, dirs = cli("compare", *COMPARE)
    assert code == 0, err
    (run_dir,) = dirs
    return run_dir, read_summary(run_dir), out


def test_compare_figure(compare_run):
    from shallownet.compare_figure import compare_figure

    run_dir, result, out = compare_run
    assert result["figures"] == ["compare.png"] and (run_dir / "compare.png").stat().st_size > 20_000
    assert "compare" in events.load(run_dir).Tags()["images"] and "figure:" in out
    fig = compare_figure(run_dir, result)
    assert_inside_canvas(fig)
    axes = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible()}
    assert len(axes) == 4
    residual, norm, ratio, sharp = (next(ax for label, ax in axes.items() if key in label)
                                    for key in ("residual", "norm", "imbalance", "sharpness"))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [row["run"] for row in result["rows"]]

    def levels(ax):
        return {round(float(line.get_ydata()[0]), 9) for line in ax.lines
                if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]}

    rows = result["rows"]
    assert round(result["tol"], 9) in levels(residual)
    assert {round(result["theory"]["norm_gf"], 9)} | {round(r["theory_norm"], 9) for r in rows
                                                       if r["method"] == "gd"} <= levels(norm)
    assert 1.0 in levels(ratio)
    assert {round(r["stability_threshold"], 9) for r in rows if r["stability_threshold"]} | {
        round(2 * result["phi"], 9)} <= levels(sharp)
    # every process's curve runs on the shared process time: its last time is the time it ran
    for row in rows:
        (curve,) = [line for line in norm.lines if line.get_label() == row["run"]]
        assert curve.get_xdata()[-1] == pytest.approx(row["time"], rel=1e-9)


def test_eos_figure_titles_say_what_was_run(compare_run):
    from shallownet.eos import NEAR, eos_figure, hovering, save_eos_figure, what_was_found

    run_dir, result, _ = compare_run
    fig = eos_figure(run_dir, result)
    assert_inside_canvas(fig)
    sharp_ax, loss_ax = fig.axes
    for ax in (sharp_ax, loss_ax):
        assert ax.get_title().startswith("scalar_linear on points, full batch, at most 300 steps")
    labels = legend_labels(fig)
    assert any(label.startswith("gd_lr=0.2: ") for label in labels)
    assert "stability threshold (2/η for GD), each in its colour" in labels
    assert all(line.get_marker() == "o" for line in sharp_ax.lines if line.get_label().startswith("gd_lr"))
    save_eos_figure(run_dir, result)
    assert "eos" in events.load(run_dir).Tags()["images"] and result["figures"][-1] == "eos.png"
    # what the legend says a process did
    times = np.arange(6.0)
    at = {"run": "gd", "outcome": "max_steps", "hovering": hovering(times, np.array([1.2, 0.5, 0.97, 1.01, 0.99,
                                                                                     1.0]))}
    assert what_was_found(at) == f"at {NEAR:g} x threshold from t = 2, then 0.995 x (median)"
    below = {"run": "gd", "outcome": "max_steps", "hovering": hovering(times, np.full(6, 0.5))}
    assert what_was_found(below) == f"stayed below {NEAR:g} x threshold (max 0.50 x)"
    assert what_was_found({"outcome": "diverged", "time": 3.0}) == "diverged at t = 3"
    # interrupted after the first measurement: only t = 0 was measured, and the legend says what happened
    stopped = {"run": "gd", "outcome": "interrupted", "hovering": hovering(np.zeros(1), np.array([0.5]))}
    assert what_was_found(stopped) == "interrupted"
