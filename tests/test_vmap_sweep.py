"""The vmapped engine of real nets (shallownet.sweep.vmap_engine): every cell equals a single `shallownet train`
run (float64: final parameters to 1e-12, same outcome and steps), sharpness against a dense Hessian, and the
refusal of models that cannot be stacked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shallownet import registry, training
from shallownet.config import RunConfig, load_config
from shallownet.losses import half_sum_mse
from shallownet.stop import OUTCOMES, StopRule
from shallownet.sweep.vmap_engine import probe, refusal, simulate_real

BASE = ["model.kind=mlp", "model.widths=[8]", "data.n_train=64", "data.n_test=16", "train.tol=1e-3",
        "train.max_steps=40", "output.progress=false"]
RULE = StopRule(1e-3, 1e12, 40)


@pytest.fixture(scope="module")
def digits():
    return registry.data_kind("digits").build(load_config(RunConfig, None, BASE), torch.float64)


def builder(data):
    kind = registry.model_kind("mlp")

    def build(seed: int, scale: float) -> nn.Module:
        return kind.build(load_config(RunConfig, None, [*BASE, f"model.seed={seed}", f"model.init_scale={scale}"]),
                          data)
    return build


def test_random_cells_equal_single_train_runs(digits, tmp_path):
    rng = np.random.default_rng(7)
    lr, scale = np.geomspace(0.05, 3.0, 6), np.array([0.5, 1.0, 1.5])
    cells = rng.choice(lr.size * scale.size, 5, replace=False)
    eta, s, seed = lr[cells // scale.size], scale[cells % scale.size], rng.integers(0, 3, cells.size)
    runs = simulate_real(builder(digits), eta, s, seed, half_sum_mse, digits.x, digits.y, RULE, x_test=digits.x_test,
                         y_test=digits.y_test, keep_params=True, sharpness_every=5, chunk_size=2)
    training.quiet_lightning()
    for i in range(cells.size):
        cfg = load_config(RunConfig, None, [*BASE, f"model.seed={seed[i]}", f"model.init_scale={s[i]}",
                                            f"optim.lr={eta[i]}"])
        folder = tmp_path / str(i)
        folder.mkdir()
        summary = training.run(cfg, folder)
        state = torch.load(folder / "last.ckpt", weights_only=True)["state_dict"]
        assert OUTCOMES[runs.outcome[i]] == summary["status"] and runs.steps[i] == summary["steps"]
        for name, p in runs.params.items():
            single = state[f"model.{name}"]
            assert torch.allclose(p[i], single, rtol=1e-12, atol=1e-12), (i, name)
        if summary["status"] != "diverged":
            assert runs.final_loss[i] == pytest.approx(summary["final"]["loss"], rel=1e-12)
            assert runs.test_accuracy[i] == summary["final"]["test_accuracy"]
            assert runs.test_loss[i] == pytest.approx(summary["final"]["test_loss"], rel=1e-12)
    assert len(set(runs.outcome.tolist())) >= 2  # the cells drawn cover more than one outcome


def test_sharpness_is_the_top_eigenvalue_of_the_dense_hessian(digits):
    from torch.func import functional_call, hessian

    build = builder(digits)
    runs = simulate_real(build, np.array([0.1, 0.1]), np.array([1.0, 2.0]), np.array([0, 1]), half_sum_mse,
                         digits.x, digits.y, StopRule(1e-3, 1e12, 1), initial_iterations=400, iterations=400)
    for i, (seed, scale) in enumerate([(0, 1.0), (1, 2.0)]):
        model = build(seed, scale)
        names = [n for n, _ in model.named_parameters()]
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])

        def loss(theta, model=model, names=names):
            params, start = {}, 0
            for n, p in zip(names, model.parameters(), strict=True):
                params[n] = theta[start:start + p.numel()].reshape(p.shape)
                start += p.numel()
            return half_sum_mse(functional_call(model, params, (digits.x,)), digits.y)

        top = torch.linalg.eigvalsh(hessian(loss)(flat)).abs().max().item()
        assert runs.initial_sharpness[i] == pytest.approx(top, rel=1e-6)


def test_models_that_cannot_be_stacked_are_refused():
    assert "BatchNorm" in refusal(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    assert "Dropout" in refusal(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))
    assert refusal(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0), nn.ReLU())) is None

    class Counting(nn.Module):  # updates a buffer in place in its forward
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2, dtype=torch.float64)
            self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

        def forward(self, x):
            self.calls += 1
            return self.lin(x)

    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    assert probe(Counting(), half_sum_mse, x, y) is not None
    assert probe(nn.Sequential(nn.Linear(3, 2, dtype=torch.float64)), half_sum_mse, x, y) is None
