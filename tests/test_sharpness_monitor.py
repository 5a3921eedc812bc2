"""SharpnessMonitor in real Lightning runs, read back with TensorBoard's own reader."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.data import DataLoader, TensorDataset

from extensions.mlp import mlp
from shallownet.callbacks.sharpness import LAYOUT, SharpnessMonitor
from shallownet.curvature import dense_hessian
from shallownet.events import read_metrics

LR = 0.3
TAGS = ["curvature/sharpness", "curvature/stability_threshold", "curvature/sharpness_x_lr",
        "curvature/sharpness_over_threshold", "curvature/hvp_count", "curvature/residual"]


def half_mse(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).mean()


class TinyRegression(L.LightningModule):
    """Full-batch GD (manual optimisation) of a 3-6-1 tanh net; one dummy batch per GD step."""

    def __init__(self, nan_after_step: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.net = mlp([3, 6, 1], "tanh", seed=0)
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(20, 3, generator=gen, dtype=torch.float64)
        self.targets = torch.randn(20, 1, generator=gen, dtype=torch.float64)
        self.nan_after_step = nan_after_step

    def forward(self, x):
        return self.net(x)

    def loss_fn(self, outputs, targets):
        return half_mse(outputs, targets)

    def curvature_data(self):
        return self.inputs, self.targets

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.loss_fn(self(self.inputs), self.targets))
        optimizer.step()
        if self.nan_after_step is not None and self.trainer.global_step >= self.nan_after_step:
            with torch.no_grad():
                self.net[0].weight.fill_(float("nan"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(1000)), batch_size=1)


def fit(module, monitor, tmp_path, max_steps):
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = L.Trainer(max_steps=max_steps, logger=logger, callbacks=[monitor], accelerator="cpu", devices=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    accumulator = EventAccumulator(logger.log_dir)
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def dense_top_eigenvalues(module, steps, k=1):
    """Replays the same GD outside Lightning and returns the dense top-k eigenvalues at the given steps."""
    net = copy.deepcopy(module.net)
    found = {}
    for step in range(max(steps) + 1):
        if step in steps:
            found[step] = torch.linalg.eigvalsh(dense_hessian(net, half_mse, (module.inputs, module.targets)))
            found[step] = found[step].flip(0)[:k].tolist()
        loss = half_mse(net(module.inputs), module.targets)
        with torch.no_grad():
            for p, g in zip(net.parameters(), torch.autograd.grad(loss, list(net.parameters())), strict=True):
                p.add_(g, alpha=-LR)
    return found


def test_logs_contract_tags_at_the_right_steps_with_dense_values(tmp_path):
    module = TinyRegression()
    expected_steps = [0, 3, 6, 7]  # multiples of 3, and the last step at train end
    exact = dense_top_eigenvalues(TinyRegression(), expected_steps)
    monitor = SharpnessMonitor(every_n_steps=3)
    accumulator = fit(module, monitor, tmp_path, max_steps=7)

    for tag in TAGS:
        assert [step for step, _ in scalars(accumulator, tag)] == expected_steps, tag
    logged = dict(scalars(accumulator, "curvature/sharpness"))
    for step in expected_steps:
        assert logged[step] == pytest.approx(exact[step][0], rel=1e-6)  # event files store float32
    assert [s for s, _ in monitor.history] == expected_steps
    for step, sharpness in monitor.history:
        assert sharpness == pytest.approx(exact[step][0], rel=1e-9)
    thresholds = scalars(accumulator, "curvature/stability_threshold")
    assert all(value == pytest.approx(2 / LR, rel=1e-6) for _, value in thresholds)
    for (_, s), (_, s_lr) in zip(scalars(accumulator, "curvature/sharpness"),
                                 scalars(accumulator, "curvature/sharpness_x_lr"), strict=True):
        assert s_lr == pytest.approx(LR * s, rel=1e-6)
    assert all(value <= 1e-10 for _, value in scalars(accumulator, "curvature/residual"))
    assert all(value >= 1 for _, value in scalars(accumulator, "curvature/hvp_count"))
    assert monitor.last_step == 7 and monitor.last["curvature/sharpness"] == monitor.history[-1][1]
    assert monitor.last["curvature/residual"] <= 1e-10 and monitor.last["curvature/hvp_count"] >= 1
    over = scalars(accumulator, "curvature/sharpness_over_threshold")  # S / (2 / lr): 1 is the edge
    for (_, s), (_, ratio) in zip(scalars(accumulator, "curvature/sharpness"), over, strict=True):
        assert ratio == pytest.approx(LR * s / 2, rel=1e-6)

    layout = layout_pb2.Layout.FromString(accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts == {"sharpness (preconditioned for adaptive processes) vs the stability threshold": [
        "^curvature/sharpness$", "^curvature/preconditioned_sharpness$", "^curvature/stability_threshold$"]}
    assert set(LAYOUT) == {"curvature"}


def test_top_k_eigenvalues_and_no_duplicate_at_train_end(tmp_path):
    module = TinyRegression()
    exact = dense_top_eigenvalues(TinyRegression(), [0, 2, 4], k=3)
    monitor = SharpnessMonitor(every_n_steps=2, top_k=3, loss_fn=half_mse, data=(module.inputs, module.targets))
    accumulator = fit(module, monitor, tmp_path, max_steps=4)
    for i in range(1, 4):
        points = scalars(accumulator, f"curvature/eigenvalue_{i}")
        assert [step for step, _ in points] == [0, 2, 4]
        for step, value in points:
            assert value == pytest.approx(exact[step][i - 1], rel=1e-6)
    assert "curvature/eigenvalue_4" not in accumulator.Tags()["scalars"]
    assert [step for step, _ in scalars(accumulator, "curvature/sharpness")] == [0, 2, 4]


def test_state_dict_round_trip(tmp_path):
    monitor = SharpnessMonitor(every_n_steps=2)
    fit(TinyRegression(), monitor, tmp_path, max_steps=4)
    restored = SharpnessMonitor(every_n_steps=2)
    restored.load_state_dict(monitor.state_dict())
    assert [step for step, _ in monitor.history] == [0, 2, 4]
    assert restored.history == monitor.history and restored.last == monitor.last
    assert torch.equal(restored.tracker.previous[0], monitor.tracker.previous[0])


def test_state_dict_after_an_off_cadence_end_is_the_state_before_it(tmp_path):
    """A run that ends at step 3 of a cadence of 2 measures there, but checkpoints the state of step 2
    and names the tags of step 3: an uninterrupted longer run never measures step 3."""
    from shallownet.callbacks.periodic import OFF_CADENCE

    monitor = SharpnessMonitor(every_n_steps=2)
    fit(TinyRegression(), monitor, tmp_path, max_steps=3)
    assert [step for step, _ in monitor.history] == [0, 2, 3]
    state = monitor.state_dict()
    assert state[OFF_CADENCE]["x"] == 3 and "curvature/sharpness" in state[OFF_CADENCE]["tags"]
    restored = SharpnessMonitor(every_n_steps=2)
    restored.load_state_dict(state)
    assert restored.history == monitor.history[:2] and restored.last_step == 2


def test_disabled_with_zero_interval(tmp_path):
    from shallownet.config import RunConfig, load_config
    from shallownet.training import build, run

    cfg = load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", "train.max_steps=3"])
    assert build(cfg).sharpness is None  # 0 in the config: no monitor at all
    summary = run(cfg, tmp_path)
    assert not [tag for tag in read_metrics(tmp_path) if tag.startswith("curvature/")]
    assert summary["final"]["sharpness"] is None
    with pytest.raises(ValueError, match="every_n_steps"):
        SharpnessMonitor(every_n_steps=0)


def test_skips_non_finite_parameters_without_crashing(tmp_path):
    monitor = SharpnessMonitor(every_n_steps=1)
    accumulator = fit(TinyRegression(nan_after_step=2), monitor, tmp_path, max_steps=4)
    assert [step for step, _ in scalars(accumulator, "curvature/sharpness")] == [0, 1]
    assert all(math.isfinite(value) for _, value in monitor.history)


@pytest.mark.parametrize("training", [True, False])
def test_measure_leaves_grad_and_mode_alone_under_no_grad(training):
    module = TinyRegression()
    module.train(training)
    exact = torch.linalg.eigvalsh(dense_hessian(module.net, half_mse, (module.inputs, module.targets)))[-1]
    monitor = SharpnessMonitor()
    with torch.no_grad():
        result = monitor.solve(module)
    assert result.converged and result.value == pytest.approx(exact.item(), rel=1e-9)
    assert all(p.grad is None for p in module.parameters())
    assert all(m.training == training for m in module.modules())
    again = monitor.solve(module)  # warm-started from the first: the answer is already there
    assert again.value == pytest.approx(result.value, rel=1e-12) and again.n_hvp <= 2


def test_float32_model_converges_at_its_precision():
    module = TinyRegression()
    module.net.float()
    module.inputs, module.targets = module.inputs.float(), module.targets.float()
    exact = torch.linalg.eigvalsh(dense_hessian(module.net.double(), half_mse,
                                                (module.inputs.double(), module.targets.double())))[-1]
    module.net.float()
    result = SharpnessMonitor().solve(module)  # default tol 1e-10 is out of float32's reach
    assert result.converged and result.residual <= 1000 * torch.finfo(torch.float32).eps
    assert result.vector.dtype == torch.float32
    assert result.value == pytest.approx(exact.item(), rel=1e-5)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        SharpnessMonitor(every_n_steps=-1)
    with pytest.raises(ValueError, match="top_k"):
        SharpnessMonitor(top_k=0)
