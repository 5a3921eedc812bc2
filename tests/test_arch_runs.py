"""The transformer (on modular addition and on sorting, MSE and cross-entropy), the vit and the resnet
through `shallownet train`, `compare` and `eos`: tiny instances, a few steps each."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from extensions.sequence_data import load_sorting
from extensions.transformer import build_transformer
from shallownet import events
from tests.conftest import read_summary

TRANSFORMER = ["model.kind=transformer", "model.layers=1", "model.d_model=8", "model.heads=2", "model.mlp_width=16"]
TINY = {
    "transformer": [*TRANSFORMER, "data.modulus=5"],
    "transformer_sorting": [*TRANSFORMER, "model.positions=sinusoidal", "data.kind=sorting", "data.vocab=3",
                            "data.length=4", "data.n_train=40", "data.n_test=20"],
    "transformer_sorting_ce": [*TRANSFORMER, "data.kind=sorting", "data.vocab=3", "data.length=4",
                               "data.n_train=40", "data.n_test=20", "loss=cross_entropy"],
    "vit": ["model.kind=vit", "model.patch=4", "model.layers=1", "model.d_model=8", "model.heads=2",
            "model.mlp_width=16", "data.n_train=64", "data.n_test=32"],
    "resnet": ["model.kind=resnet", "model.depth=1", "model.width=4", "model.stages=2", "data.n_train=64",
               "data.n_test=32"],
}
COMMON = ["train.max_steps=6", "train.tol=1e-300", "output.progress=false"]
PROCESSES = "processes=[{method: gd, lr: 0.1}, {method: momentum, lr: 0.05, momentum: 0.5}]"
slow = pytest.mark.slow


@pytest.mark.parametrize("task", list(TINY))
def test_train(cli, task):
    code, out, err, dirs = cli("train", *TINY[task], *COMMON, "optim.lr=0.1", "monitor.sharpness.every_n_steps=3")
    assert code == 0, err
    summary = read_summary(dirs[0])
    assert summary["status"] == "max_steps" and summary["steps"] == 6
    assert summary["final"]["loss"] < summary["init"]["loss"] and summary["final"]["sharpness"] > 0
    assert 0 <= summary["final"]["accuracy"] <= 1 and 0 <= summary["final"]["test_accuracy"] <= 1
    assert events.read_metrics(dirs[0])["curvature/sharpness"][0].tolist() == [0, 3, 6]
    # the capability probe's verdict: both AD methods work through the written-out attention and LayerNorm
    assert summary["hvp_probe"] == [{"where": "float64, cpu", "method": "double-backward", "checked": True,
                                     "failed": []}]


def test_sorting_accuracy_counts_whole_sequences(cli):
    """accuracy: the fraction of examples whose every answer is right (recomputed from the final parameters)."""
    code, _, err, dirs = cli("train", *TINY["transformer_sorting"], *COMMON, "train.max_steps=20", "optim.lr=0.3")
    assert code == 0, err
    cfg = OmegaConf.load(dirs[0] / "config.yaml")
    data = load_sorting(cfg)
    model = build_transformer(cfg, data)
    state = torch.load(dirs[0] / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    with torch.no_grad():
        right = model(data.x).argmax(dim=-1) == data.y
    logged = events.read_metrics(dirs[0])["dynamics/accuracy"][1][-1]
    assert logged == pytest.approx(float(right.all(dim=1).double().mean()), abs=1e-12)
    assert float(right.all(dim=1).double().mean()) < float(right.double().mean())  # not the per-token rate


@pytest.mark.parametrize("task", [t if t == "transformer" else pytest.param(t, marks=slow) for t in TINY])
def test_compare(cli, task):
    code, out, err, dirs = cli("compare", *TINY[task], *COMMON, PROCESSES, "monitor.sharpness.every_n_steps=3")
    assert code == 0, err
    rows = {row["run"]: row for row in read_summary(dirs[0])["rows"]}
    assert list(rows) == ["gd_lr=0.1", "momentum_lr=0.05_momentum=0.5"]
    assert rows["gd_lr=0.1"]["stability_threshold"] == pytest.approx(20.0)
    assert rows["momentum_lr=0.05_momentum=0.5"]["stability_threshold"] == pytest.approx((2 + 2 * 0.5) / 0.05)
    assert all(row["final_sharpness"] > 0 and row["outcome"] == "max_steps" for row in rows.values())


@pytest.mark.parametrize("task", [t if t == "transformer" else pytest.param(t, marks=slow) for t in TINY])
def test_eos(cli, task):
    code, out, err, dirs = cli("eos", *TINY[task], *COMMON, PROCESSES, "monitor.sharpness.every_n_steps=3")
    assert code == 0, err
    result = read_summary(dirs[0])
    assert (dirs[0] / "eos.png").stat().st_size > 0 and result["model"] == TINY[task][0].partition("=")[2]
    assert [row["run"] for row in result["rows"]] == ["gd_lr=0.1", "momentum_lr=0.05_momentum=0.5"]
    assert all(row["hovering"]["reached_at"] is not None or row["hovering"]["max_before"] > 0
               for row in result["rows"])
