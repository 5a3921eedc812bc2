"""model.init_scale of every real net: the model's own initialisation times the scale (so a sweep cell reruns
alone through `shallownet train`), refused when not a finite positive number."""

from __future__ import annotations

import pytest
import torch

from shallownet import training
from shallownet.config import RunConfig, load_config
from tests.conftest import read_summary

TINY = {
    "mlp": ["model.kind=mlp", "model.widths=[6]", "data.n_train=32", "data.n_test=8"],
    "cnn": ["model.kind=cnn", "model.channels=[2]", "data.n_train=32", "data.n_test=8"],
    "vgg": ["model.kind=vgg", "model.channels=[2]", "model.convs_per_stage=1", "model.hidden=4",
            "data.n_train=32", "data.n_test=8"],
    "resnet": ["model.kind=resnet", "model.depth=1", "model.width=2", "model.stages=1", "data.n_train=32",
               "data.n_test=8"],
    "transformer": ["model.kind=transformer", "model.layers=1", "model.d_model=4", "model.heads=1",
                    "model.mlp_width=4", "data.modulus=3"],
}


def built(overrides: list[str]) -> torch.nn.Module:
    return training.build(load_config(RunConfig, None, overrides)).module.model


@pytest.mark.parametrize("kind", list(TINY))
def test_init_scale_multiplies_every_parameter_of_the_own_init(kind):
    base = built(TINY[kind])
    scaled = built([*TINY[kind], "model.init_scale=2.5", "train.max_steps=1"])
    pairs = list(zip(base.parameters(), scaled.parameters(), strict=True))
    assert pairs and all(torch.equal(q, 2.5 * p) for p, q in pairs)
    assert all(torch.equal(b, c) for b, c in zip(base.buffers(), scaled.buffers(), strict=True))
    other_seed = built([*TINY[kind], "model.init_scale=2.5", "model.seed=1"])
    assert not all(torch.equal(p, q) for p, q in zip(scaled.parameters(), other_seed.parameters(), strict=True))


@pytest.mark.parametrize("value", ["0", "-1.0", "inf", "nan"])
def test_bad_init_scale_is_one_line_exit_2(cli, value):
    code, _, err, dirs = cli("train", *TINY["mlp"], f"model.init_scale={value}")
    assert code == 2 and not dirs
    assert err.count("\n") == 1 and "model.init_scale" in err
    assert "> 0" in err or value in ("inf", "nan")  # non-finite floats are refused on load already


def test_train_starts_at_the_scaled_norm(cli):
    """The squared parameter norm the run records at step 0 is scale^2 times the unscaled one."""
    args = [*TINY["mlp"], "train.max_steps=1", "output.progress=false"]
    code, _, err, dirs = cli("train", *args)
    assert code == 0, err
    code, _, err, dirs = cli("train", *args, "model.init_scale=0.5")
    assert code == 0, err
    one, half = (read_summary(d)["init"]["norm"] for d in dirs)
    assert half == pytest.approx(0.25 * one, rel=1e-12)
