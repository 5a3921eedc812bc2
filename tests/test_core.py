"""The model, the GD optimizer, the data and the Lightning run, against theory.md's exact formulas."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from shallownet import quantities, theory
from shallownet.config import RunConfig, load_config
from shallownet.data import effective_phi, regression_points
from shallownet.model import ScalarLinearNet, initial_vectors
from shallownet.optim import GradientDescent
from shallownet.training import run


class RecordParameters(L.Callback):
    """Keeps (global_step, a, b) at the start and after every batch."""

    def __init__(self):
        self.points = []

    def on_train_start(self, trainer, pl_module):
        self._keep(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.points[-1][0]:
            self._keep(trainer, pl_module)

    def _keep(self, trainer, pl_module):
        self.points.append((trainer.global_step, pl_module.model.a.detach().clone().numpy(),
                            pl_module.model.b.detach().clone().numpy()))


def config(*overrides: str):
    return load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", *overrides])


def test_gradient_descent_is_the_simultaneous_update():
    a0, b0 = initial_vectors(5, "gaussian", scale=1.3, seed=3)
    net = ScalarLinearNet(a0, b0)
    opt = GradientDescent(net.parameters(), lr=0.37)
    loss = 0.5 * (net.product() - 1.0) ** 2
    loss.backward()
    opt.step()
    eps = float(a0 @ b0 - 1.0)
    torch.testing.assert_close(net.a.detach(), a0 - 0.37 * eps * b0, rtol=0, atol=1e-15)
    torch.testing.assert_close(net.b.detach(), b0 - 0.37 * eps * a0, rtol=0, atol=1e-15)


def test_gradient_descent_rejects_non_positive_lr():
    with pytest.raises(ValueError, match="lr"):
        GradientDescent([torch.zeros(1, requires_grad=True)], lr=0.0)


@pytest.mark.parametrize("imbalance", [-0.7, 0.0, 0.5])
def test_imbalanced_init_sets_norm_and_imbalance_exactly(imbalance):
    a, b = initial_vectors(7, "imbalanced", scale=1.5, seed=1, imbalance=imbalance)
    assert float(quantities.norm(a, b)) == pytest.approx(2 * 1.5**2, rel=1e-14)
    assert float(quantities.imbalance(a, b)) == pytest.approx(imbalance * 2 * 1.5**2, rel=1e-13, abs=1e-14)


def test_gaussian_init_is_seeded_and_explicit_is_exact():
    first, again = initial_vectors(4, seed=11), initial_vectors(4, seed=11)
    other = initial_vectors(4, seed=12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    a, b = initial_vectors(2, "explicit", a0=[1.0, 2.0], b0=[3.0, -4.0])
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [3.0, -4.0] and a.dtype == torch.float64


def test_noisy_data_has_unit_second_moment_and_least_squares_phi():
    x, y = regression_points(50, phi=1.5, noise=0.3, seed=4)
    assert float(x.square().mean()) == pytest.approx(1.0, rel=1e-14)
    slope = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0][0]
    assert effective_phi(x, y) == pytest.approx(slope, rel=1e-12)
    assert effective_phi(x, y) != pytest.approx(1.5, rel=1e-6)


@pytest.mark.parametrize("overrides", [
    ("optim.lr=0.3", "model.width=6", "model.init.scale=1.4", "model.init.seed=2"),
    ("optim.lr=0.45", "model.width=3", "model.init.scheme=imbalanced", "model.init.imbalance=-0.6"),
    ("optim.lr=0.2", "data.n_points=25", "data.noise=0.4", "model.init.seed=5"),
])
def test_lightning_gd_follows_the_one_step_recursions(tmp_path, overrides):
    cfg = config("train.max_steps=60", "train.tol=1e-300", *overrides)
    recorder = RecordParameters()
    summary = run(cfg, tmp_path, extra_callbacks=[recorder])
    phi, eta = summary["phi"], cfg.optim.lr
    assert len(recorder.points) == summary["steps"] + 1
    for (step, a, b), (step_next, a_next, b_next) in zip(recorder.points[:-1], recorder.points[1:], strict=True):
        assert step_next == step + 1
        now, nxt = theory.state(a, b, phi), theory.state(a_next, b_next, phi)
        eps, lam, q = theory.gd_step(now["residual"], now["norm"], now["imbalance_per_unit"], eta, phi)
        assert nxt["residual"] == pytest.approx(eps, rel=1e-12, abs=1e-12)
        assert nxt["norm"] == pytest.approx(lam, rel=1e-12)
        np.testing.assert_allclose(nxt["imbalance_per_unit"], q, rtol=1e-12, atol=1e-12)


def test_global_step_counts_gd_steps_and_max_steps_stops(tmp_path):
    recorder = RecordParameters()
    summary = run(config("train.max_steps=37", "train.tol=1e-300", "optim.lr=0.01"), tmp_path,
                  extra_callbacks=[recorder])
    assert summary["status"] == "max_steps"
    assert summary["steps"] == 37 == recorder.points[-1][0] == len(recorder.points) - 1


def test_convergence_stops_at_the_first_step_within_tolerance(tmp_path):
    cfg = config("train.tol=1e-6", "optim.lr=0.2")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "converged"
    # replay with the exact (U, V) recursion: the first k with |eps_k| <= tol
    a0, b0 = initial_vectors(cfg.model.width, seed=cfg.model.init.seed)
    u, v = theory.uv_from_ab(a0.numpy(), b0.numpy())
    k = 0
    while abs(theory.state_from_uv(u, v, 1.0)[0]) > 1e-6:
        u, v = theory.uv_step(u, v, 0.2, 1.0)
        k += 1
    assert summary["steps"] == k
    assert abs(summary["final"]["residual"]) <= 1e-6 < abs(summary["init"]["residual"])


def test_summary_endpoints_match_theory(tmp_path):
    cfg = config("optim.lr=0.25", "model.init.scale=1.2", "monitor.sharpness.every_n_steps=10")
    summary = run(cfg, tmp_path)
    a0, b0 = initial_vectors(cfg.model.width, scale=1.2, seed=0)
    init = theory.state(a0.numpy(), b0.numpy(), 1.0)
    assert summary["init"]["residual"] == pytest.approx(init["residual"], rel=1e-14)
    assert summary["init"]["loss"] == pytest.approx(0.5 * init["residual"] ** 2, rel=1e-14)
    init_sharpness = theory.sharpness(init["residual"], init["norm"], 1.0)
    assert summary["init"]["sharpness"] == pytest.approx(init_sharpness, rel=1e-8)
    final = summary["final"]
    assert final["sharpness"] == pytest.approx(theory.sharpness(final["residual"], final["norm"], 1.0), rel=1e-8)
    # identity lam^2 = 4 (eps + phi)^2 + Qn^2 along the trajectory
    assert final["norm"] ** 2 == pytest.approx(4 * (final["residual"] + 1) ** 2 + final["imbalance_norm"] ** 2)


def test_float32_runs_too(tmp_path):
    summary = run(config("train.dtype=float32", "train.tol=1e-5", "optim.lr=0.2"), tmp_path)
    assert summary["status"] == "converged" and math.isfinite(summary["final"]["norm"])

