"""Phase maps: `shallownet sweep model.kind=mlp` (every cell equals a single `shallownet train` run), the region
classifier on the uv model's catapult window (Phi = 0), refusals and --help of the real-net sweep."""

from __future__ import annotations

import numpy as np
import pytest

from shallownet import theory
from shallownet.cli import main
from shallownet.sweep.regions import REGIONS

REAL = ["model.kind=mlp", "model.widths=[8]", "data.n_train=64", "data.n_test=16", "grid.lr.start=0.05",
        "grid.lr.stop=3.0", "grid.lr.num=4", "grid.scale.start=0.5", "grid.scale.stop=1.5", "grid.scale.num=2",
        "grid.seeds=[0,1]", "train.tol=1e-3", "train.max_steps=40", "sharpness.every_n_steps=5",
        "output.progress=false", "output.tensorboard=false"]


def _folder(root):
    (folder,) = (root / "phase_map").iterdir()
    return folder


def test_real_sweep_cells_equal_single_train_runs(tmp_path, capsys):
    import torch

    from shallownet import training
    from shallownet.config import RunConfig, load_config
    from shallownet.stop import OUTCOMES
    from shallownet.sweep.real_grid import RealSweepConfig, run_config

    root = tmp_path / "runs"
    assert main(["sweep", *REAL, f"output.root={root}", "output.save_params=true"]) == 0
    folder = _folder(root)
    grid, params = np.load(folder / "grid.npz"), np.load(folder / "params.npz")
    for name in ("outcome", "steps", "final_loss", "final_sharpness", "initial_sharpness", "max_loss_ratio",
                 "balance_ratio", "test_loss", "test_accuracy", "region"):
        assert grid[name].shape == (4, 2, 2), name
    assert list(grid["region_names"]) == list(REGIONS) and list(grid["outcome_names"]) == list(OUTCOMES)
    assert np.isfinite(grid["balance_ratio"][grid["region"] != REGIONS.index("diverged")]).all()  # a ReLU net
    assert {p.name for p in folder.glob("*.png")} == {"phase_map.png", "sharpness.png", "steps.png", "balance.png"}
    sweep_cfg = load_config(RealSweepConfig, folder / "config.yaml", [])
    rng = np.random.default_rng(3)
    training.quiet_lightning()
    for n, cell in enumerate(rng.choice(16, 3, replace=False)):
        i, j, k = np.unravel_index(cell, (4, 2, 2))
        cfg = load_config(RunConfig, None, [*run_config(sweep_cfg, grid["eta"][i], grid["scale"][j], grid["seed"][k]),
                                            "output.progress=false"])
        single = tmp_path / f"single{n}"
        single.mkdir()
        summary = training.run(cfg, single)
        assert OUTCOMES[grid["outcome"][i, j, k]] == summary["status"]
        assert grid["steps"][i, j, k] == summary["steps"]
        state = torch.load(single / "last.ckpt", weights_only=True)["state_dict"]
        for name in params.files:
            assert np.allclose(params[name][i, j, k], state[f"model.{name}"].numpy(), rtol=1e-12, atol=1e-12)
    assert len(set(grid["outcome"].ravel().tolist())) >= 2


def test_uv_model_one_gd_step_of_lambda():
    """lam' = lam + eta r (eta r lam - 4 (r + Phi)) for one GD step of L = 1/2 (a.b - Phi)^2."""
    rng = np.random.default_rng(0)
    for phi in (0.0, 1.0):
        a, b, eta = rng.normal(size=5), rng.normal(size=5), 0.3
        r = a @ b - phi
        a1, b1 = a - eta * r * b, b - eta * r * a
        lam = a @ a + b @ b
        assert a1 @ a1 + b1 @ b1 == pytest.approx(lam + eta * r * (eta * r * lam - 4 * (r + phi)), rel=1e-12)


def test_shallow_sweep_regions_on_the_uv_catapult_window(tmp_path):
    """Wide uv model (Phi = 0, gaussian init of width 2000: r0 << lam0): lazy for eta lam0 < 2, catapult for
    2 < eta lam0 < 4, diverged beyond; the classifier must say so."""
    root = tmp_path / "runs"
    code = main(["sweep", "phi=0", "init.scheme=gaussian", "init.width=2000", "grid.scale.start=1.0",
                 "grid.scale.stop=1.0", "grid.scale.num=1", "grid.lr.start=0.25", "grid.lr.stop=3.0", "grid.lr.num=40",
                 "grid.lr.spacing=linear", "train.max_steps=5000", "train.tol=1e-10", f"output.root={root}",
                 "output.progress=false", "output.tensorboard=false", "engine.backend=batched"])
    assert code == 0
    (folder,) = (root / "figure3").iterdir()
    grid = np.load(folder / "grid.npz")
    x = grid["eta"] * grid["norm0"][0]
    region = np.array(REGIONS)[grid["region"][:, 0]]
    assert list(grid["region_names"]) == list(REGIONS)
    lazy, catapult, diverged = x < 1.8, (x > 2.2) & (x < 3.8), x > 4.2
    assert lazy.sum() >= 5 and catapult.sum() >= 5 and diverged.sum() >= 5
    assert (region[lazy] == "lazy").all(), region[lazy]
    assert (region[catapult] == "catapult").all(), list(zip(x[catapult], region[catapult], strict=True))
    assert (region[diverged] == "diverged").all(), region[diverged]
    # a catapult ends flatter than 2/eta and than it started; lazy runs keep their sharpness to a few percent
    s_final = grid["final_sharpness"][:, 0]
    assert (s_final[catapult] * grid["eta"][catapult] < 2).all()
    assert np.allclose(s_final[lazy], theory.sharpness(grid["residual0"][0], grid["norm0"][0], 0.0), rtol=0.05)


def test_models_that_cannot_be_vectorised_are_refused_before_the_folder(tmp_path, capsys):
    root = tmp_path / "runs"
    code = main(["sweep", "model.kind=vgg", "model.batch_norm=true", "model.channels=[4]", "model.hidden=0",
                 "data.n_train=16", f"output.root={root}"])
    err = capsys.readouterr().err
    assert code == 2 and "BatchNorm" in err and len(err.strip().splitlines()) == 1
    assert not root.exists()


def test_real_sweep_bad_keys_and_help(tmp_path, capsys):
    assert main(["sweep", "model.kind=mlp", "grid.seeds=[]", f"output.root={tmp_path}"]) == 2
    assert "grid.seeds" in capsys.readouterr().err
    assert main(["sweep", "model.kind=mlp", "phi=1"]) == 2  # the shallow sweep's key
    assert "unknown config key 'phi'" in capsys.readouterr().err
    assert main(["sweep", "--help", "model.kind=mlp"]) == 0
    out = capsys.readouterr().out
    assert "model.widths" in out and "grid.seeds" in out and "sharpness.margin" in out
    assert main(["sweep", "--help"]) == 0
    assert "model.widths" not in capsys.readouterr().out
