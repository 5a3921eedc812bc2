"""The batch-sharpness estimators (shallownet.curvature.batch) against brute force on small data, the Monte
Carlo interval against the exact value, the scalar-net identity, and the monitor in a run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from shallownet.config import RunConfig, load_config
from shallownet.curvature import batch
from shallownet.curvature.dense import dense_hessian
from shallownet.training import build, fit


def half_mse(out, y):
    return 0.5 * (out.squeeze(-1) - y).square().mean()


def tiny_problem(n=8, d=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    return model, torch.randn(n, d, dtype=torch.float64), torch.randn(n, dtype=torch.float64)


def brute_force(model, x, y, size):
    """Every batch, one by one: dense H_B and H, autograd g_B and g, in float64 numpy."""
    def gradient(rows):
        params = list(model.parameters())
        return torch.cat([t.reshape(-1) for t in torch.autograd.grad(half_mse(model(x[rows]), y[rows]), params)])

    full = list(range(len(x)))
    h = dense_hessian(model, half_mse, (x, y)).numpy()
    g = gradient(full).numpy()
    ratios, noise, tops = [], [], []
    for rows in itertools.combinations(full, size):
        rows = list(rows)
        g_b, h_b = gradient(rows).numpy(), dense_hessian(model, half_mse, (x[rows], y[rows])).numpy()
        ratios.append(g_b @ h_b @ g_b / (g_b @ g_b))
        noise.append(g_b @ h @ g_b)
        tops.append(np.linalg.eigvalsh(h_b)[-1])
    return {"batch_sharpness": np.mean(ratios), "gni": np.mean(noise) / (g @ g), "batch_lambda_max": np.mean(tops)}


def test_exact_enumeration_matches_brute_force():
    model, x, y = tiny_problem()
    batches = batch.all_batches(8, 3)
    assert batches.shape == (56, 3)
    got = batch.estimate(model, half_mse, x, y, batches, exact=True)
    for key, value in brute_force(model, x, y, 3).items():
        assert got[key] == pytest.approx(value, rel=1e-10), key
    for key in ("batch_sharpness", "gni", "batch_lambda_max"):
        assert got[f"{key}_stderr"] == 0.0


@pytest.mark.parametrize("key", ["batch_sharpness", "gni", "batch_lambda_max"])
def test_the_monte_carlo_interval_covers_the_exact_value_at_its_nominal_rate(key):
    model, x, y = tiny_problem(n=10)
    exact = batch.estimate(model, half_mse, x, y, batch.all_batches(10, 3), exact=True)[key]
    covered, seeds = 0, 40
    for seed in range(seeds):
        mc = batch.estimate(model, half_mse, x, y, batch.random_batches(10, 3, 60, torch.Generator().manual_seed(seed)))
        assert 0 < mc[f"{key}_stderr"] and abs(mc[key] - exact) < 5 * mc[f"{key}_stderr"]
        covered += abs(mc[key] - exact) <= 1.96 * mc[f"{key}_stderr"]
    assert 0.8 <= covered / seeds <= 1.0  # nominal 95 % (binomial sd over 40 seeds: 3.4 %)


def run_config(*overrides):
    return load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", "train.tol=1e-300",
                                         "train.dtype=float64", "data.n_points=9", "data.noise=0.2",
                                         "model.width=4", "optim.method=sgd", "optim.batch_size=3", *overrides])


def test_on_the_scalar_net_batch_sharpness_is_the_full_batch_ratio_exactly_and_below_lambda_max():
    pieces = build(run_config("train.max_steps=5"))
    fit(pieces.module, pieces.datamodule, max_steps=5)
    module = pieces.module
    x, y = module.curvature_data()
    got = batch.estimate(module.model, module.loss_fn, x, y, batch.all_batches(9, 3), exact=True)
    parts = batch.per_batch(module.model, module.loss_fn, x, y, batch.all_batches(9, 3)[:1])
    assert got["batch_sharpness"] == pytest.approx(float(parts["full_ratio"]), rel=1e-12)
    top = float(torch.linalg.eigvalsh(dense_hessian(module.model, module.loss_fn, (x, y)))[-1])
    assert got["batch_sharpness"] < top


def test_the_monitor_logs_its_tags_and_leaves_the_trajectory_alone():
    plain = build(run_config("train.max_steps=12"))
    fit(plain.module, plain.datamodule, max_steps=12, callbacks=plain.callbacks)
    watched = build(run_config("train.max_steps=12", "monitor.batch_sharpness.every_n_steps=4",
                               "monitor.batch_sharpness.n_batches=20"))
    fit(watched.module, watched.datamodule, max_steps=12, callbacks=watched.callbacks)
    for ours, theirs in zip(watched.module.model.parameters(), plain.module.model.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    monitor = watched.monitors["batch_sharpness"]
    assert set(monitor.last) == {f"curvature/{k}" for k in ("step_sharpness", "batch_sharpness", "gni",
                                                             "batch_lambda_max", "batch_sharpness_stderr",
                                                             "gni_stderr", "batch_lambda_max_stderr")}
    assert monitor.last_step == 12 and monitor.last["curvature/batch_sharpness_stderr"] > 0
    module = watched.module
    x, y = module.curvature_data()
    rows = module.process.batch_indices(12, 9)  # the batch of the step from state 12
    expected = batch.per_batch(module.model, module.loss_fn, x, y, rows[None], lambda_max=False)["ratio"][0]
    assert monitor.last["curvature/step_sharpness"] == pytest.approx(float(expected), rel=1e-12)


def test_class_labels_work_under_the_vmapped_estimator():
    """half_sum_mse on integer labels (digits) inside vmap equals it on their one-hot float targets."""
    from shallownet.losses import half_sum_mse

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x, labels = torch.randn(7, 4, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0, 2, 2])
    batches = batch.random_batches(7, 3, 5, torch.Generator().manual_seed(0))
    got = batch.estimate(model, half_sum_mse, x, labels, batches)
    want = batch.estimate(model, half_sum_mse, x, nn.functional.one_hot(labels, 3).double(), batches)
    assert got == pytest.approx(want, rel=1e-12)


def test_lanczos_gives_the_dense_batch_lambda_max(monkeypatch):
    """Above MAX_DENSE_BATCH_DIM parameters each batch's top eigenvalue comes from Lanczos: the same value."""
    model, x, y = tiny_problem(n=10)
    batches = batch.random_batches(10, 3, 6, torch.Generator().manual_seed(0))
    dense = batch.per_batch(model, half_mse, x, y, batches)["lambda_max"]
    monkeypatch.setattr(batch, "MAX_DENSE_BATCH_DIM", 0)
    lanczos = batch.per_batch(model, half_mse, x, y, batches)["lambda_max"]
    assert lanczos.tolist() == pytest.approx(dense.tolist(), rel=1e-9)
