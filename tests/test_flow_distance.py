"""compare's compare/distance_to_gd: each flow sub-run against the GD sub-run at its eta on t = eta k, checked
against the parameters the sub-runs saved, and the modified flow closer to GD than gradient flow."""

from __future__ import annotations

import json

import pytest
import torch

from shallownet import events

ETA = 0.05
PROCESSES = f"processes=[{{method: gd, lr: {ETA}}}, {{method: flow}}, {{method: modified_flow, lr: {ETA}}}]"


def final_parameters(run_dir) -> torch.Tensor:
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return torch.cat([value.reshape(-1).double() for key, value in state.items() if key.startswith("model.")])


def test_distance_to_gd_is_measured_on_gds_clock_and_matches_the_saved_parameters(cli):
    code, out, err, dirs = cli("compare", "model.width=3", PROCESSES, "train.max_time=1.0", "train.max_steps=100000",
                               "train.tol=1e-300", "train.dtype=float64", "monitor.sharpness.every_n_steps=0")
    assert code == 0, err
    run_dir = dirs[0]
    rows = {row["run"]: row for row in json.loads((run_dir / "summary.json").read_text())["rows"]}
    assert list(rows) == [f"gd_lr={ETA:g}", "flow", f"modified_flow_lr={ETA:g}"]  # as listed, though GD ran first
    gd = final_parameters(run_dir / f"gd_lr={ETA:g}")
    assert rows[f"gd_lr={ETA:g}"]["steps"] == 20 and rows[f"gd_lr={ETA:g}"]["distance_to_gd_end"] is None
    for name in ("flow", f"modified_flow_lr={ETA:g}"):
        row = rows[name]
        assert row["time"] == pytest.approx(1.0, abs=1e-12)
        assert row["distance_to_gd_end"] == pytest.approx(float((final_parameters(run_dir / name) - gd).norm()),
                                                          rel=1e-12)
        steps, values = events.read_metrics(run_dir / name)["compare/distance_to_gd"]
        assert list(steps) == list(range(21))  # every GD step k, at GD's x-axis step (time_unit = eta)
        assert values[0] == 0 and max(values) == pytest.approx(row["distance_to_gd_max"], rel=1e-12)
    flow, modified = rows["flow"]["distance_to_gd_end"], rows[f"modified_flow_lr={ETA:g}"]["distance_to_gd_end"]
    # GD - GF is O(eta) t, GD - modified flow O(eta^2) t: at eta = 0.05 the ratio is about 0.1
    assert modified < 0.2 * flow, (modified, flow)
    assert "|d GD|(T)" in out
    # compare.png draws the distance as a panel of its own, each flow's curve ending where the table says
    from shallownet.compare_figure import compare_figure

    fig = compare_figure(run_dir, json.loads((run_dir / "summary.json").read_text()))
    (panel,) = [ax for ax in fig.axes if ax.get_ylabel().startswith("distance to the GD run")]
    ends = {line.get_label(): line.get_ydata()[-1] for line in panel.lines}
    flows = ("flow", f"modified_flow_lr={ETA:g}")
    assert ends == pytest.approx({name: rows[name]["distance_to_gd_end"] for name in flows}, rel=1e-9)
