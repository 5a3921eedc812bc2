"""data.kind=linear_regression (its spectrum exactly) and model.kind=diagonal_linear (its forward, and GD's
exact per-coordinate imbalance map), in runs built by name, with SGD and the batch-sharpness monitor."""

from __future__ import annotations

import pytest
import torch

from shallownet.config import RunConfig, load_config
from shallownet.training import build, fit

SPECTRUM = [8.0, 4.0, 2.0, 1.0, 0.5]
BASE = ["model.kind=diagonal_linear", "data.kind=linear_regression", "data.n=20", "data.d=5", "data.noise=0.3",
        f"data.spectrum=[{','.join(map(str, SPECTRUM))}]", "train.dtype=float64", "train.tol=1e-300",
        "monitor.sharpness.every_n_steps=0"]


def config(*overrides):
    return load_config(RunConfig, None, [*BASE, *overrides])


def test_linear_regression_has_the_chosen_spectrum_of_x_transpose_x():
    data = build(config("train.max_steps=1")).module.data
    eigenvalues = torch.linalg.eigvalsh(data.x.T @ data.x / 20)
    torch.testing.assert_close(eigenvalues, torch.tensor(sorted(SPECTRUM), dtype=torch.float64), rtol=1e-12, atol=0)


def test_diagonal_linear_forward_and_gd_imbalance_map_per_coordinate():
    lr = 0.05
    pieces = build(config("train.max_steps=1", "optim.method=gd", f"optim.lr={lr}"))
    model, data = pieces.module.model, pieces.module.data
    a, b = model.a.detach().clone(), model.b.detach().clone()
    torch.testing.assert_close(model(data.x), (data.x * (a * b)).sum(dim=1), rtol=1e-14, atol=1e-14)
    residual = data.x @ (a * b) - data.y
    s = data.x.T @ residual / len(residual)  # dL/dw_j of L = 1/2 mean (x.w - y)^2
    fit(pieces.module, pieces.datamodule, max_steps=1)
    before = a.square() - b.square()
    after = model.quantities()["imbalances"]
    torch.testing.assert_close(after, before * (1 - lr**2 * s.square()), rtol=1e-12, atol=1e-14)
    assert not torch.equal(after, before)


def test_sgd_on_the_diagonal_net_logs_batch_sharpness_beside_the_threshold():
    pieces = build(config("train.max_steps=40", "optim.method=sgd", "optim.lr=0.2", "optim.batch_size=4",
                          "monitor.batch_sharpness.every_n_steps=20", "monitor.batch_sharpness.n_batches=30",
                          "monitor.sharpness.every_n_steps=20"))
    fit(pieces.module, pieces.datamodule, max_steps=40, callbacks=pieces.callbacks)
    last = pieces.monitors["batch_sharpness"].last
    assert pieces.monitors["sharpness"].last["curvature/stability_threshold"] == pytest.approx(2 / 0.2)
    assert 0 < last["curvature/batch_sharpness"] < last["curvature/batch_lambda_max"]


def test_a_model_whose_inputs_do_not_fit_is_refused():
    from extensions.diagonal_linear import build_diagonal_linear
    from shallownet.checks import ConfigError
    from shallownet.registry import FullBatchData

    with pytest.raises(ConfigError, match="model.kind"):
        build_diagonal_linear(config("train.max_steps=1"), FullBatchData(torch.zeros(3), torch.zeros(3)))
