"""Per-unit balance C_j = |w_j|^2 - |v_j|^2 (theory.md 8.4): the exact GD identity, conservation under gradient
flow, where it does not hold, the unit structure (and what is refused), and BalanceMonitor in Lightning."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from extensions.balance import (
    BalanceMonitor,
    applies,
    balance_step,
    hidden_units,
    layer_sums,
    mean_abs,
    predict_balance,
    unit_balance,
)
from extensions.real_models import build_cnn_net, build_mlp_net, build_vgg_net
from shallownet.callbacks.periodic import OFF_CADENCE
from shallownet.callbacks.tensorboard import log_histogram
from shallownet.flow import DormandPrince
from shallownet.losses import half_sum_mse
from shallownet.optim import GradientDescent

CLASSES = 3


# --- nets and data ------------------------------------------------------------------------------------

def relu_mlp(seed=0):
    return build_mlp_net(6, [7, 5], CLASSES, "relu", seed=seed)


def leaky_mlp(seed=0):
    return build_mlp_net(6, [7, 5], CLASSES, "leaky_relu", seed=seed)


def tanh_mlp(seed=0):
    return build_mlp_net(6, [7, 5], CLASSES, "tanh", seed=seed)


def relu_cnn(seed=0):
    """conv - ReLU - maxpool - conv - leaky ReLU - maxpool - flatten - Linear - ReLU - Linear (a nested block)."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("features", nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=torch.float64), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(4, 3, 3, padding=1, dtype=torch.float64), nn.LeakyReLU(0.2),
                                   nn.MaxPool2d(2))),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(3 * 2 * 2, 5, dtype=torch.float64)), ("act", nn.ReLU()),
        ("out", nn.Linear(5, CLASSES, dtype=torch.float64)),
    ]))


def small_cnn(seed=0):
    return build_cnn_net((2, 8, 8), [4, 3], CLASSES, seed=seed)


def small_vgg(seed=0, batch_norm=False):
    return build_vgg_net((2, 8, 8), [3, 4], CLASSES, convs_per_stage=2, hidden=5, batch_norm=batch_norm, seed=seed)


def bn_vgg(seed=0):
    return small_vgg(seed, batch_norm=True)


def problem(image: bool, n: int = 12, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 8, 8, generator=gen, dtype=torch.float64) if image else \
        torch.randn(n, 6, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (n,), generator=gen)


HOMOGENEOUS_NETS = {"relu_mlp": (relu_mlp, False), "leaky_mlp": (leaky_mlp, False), "relu_cnn": (relu_cnn, True),
                    "registered_cnn": (small_cnn, True), "registered_vgg": (small_vgg, True)}


def closure_for(model, x, y, holder):
    def closure():
        holder[0].zero_grad()
        loss = half_sum_mse(model(x), y)
        loss.backward()
        return loss
    return closure


def scale_of(model) -> float:
    """A size for relative errors: the largest |w_j|^2 + |v_j|^2 is at most the total squared norm."""
    return float(sum(p.detach().square().sum() for p in model.parameters()))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --- the identity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(HOMOGENEOUS_NETS))
def test_gd_step_moves_each_unit_balance_by_eta2_gradient_difference(name):
    make, image = HOMOGENEOUS_NETS[name]
    model = make()
    assert applies(model) == (True, "")
    x, y = problem(image)
    eta = 0.7
    opt = GradientDescent(model.parameters(), lr=eta)
    closure = closure_for(model, x, y, [opt])
    for _ in range(4):
        before = unit_balance(model)
        closure()
        predicted = predict_balance(model, eta)
        opt.step()
        measured = unit_balance(model)
        scale = scale_of(model)
        assert max_diff(predicted, measured) <= 1e-13 * scale
        # the test has teeth: C_j moved, and not by first-order terms (they cancel exactly)
        assert max_diff(before, measured) >= 1e-6 * scale
        first_order = {k: before[k] + eta * balance_step(model)[k] for k in before}
        assert max_diff(first_order, measured) > 1e3 * max_diff(predicted, measured)


@pytest.mark.parametrize("name", ["relu_mlp", "relu_cnn"])
def test_per_unit_euler_identity_and_layer_sums(name):
    """<w_j, dL/dw_j> = <v_j, dL/dv_j> for every unit (checks the unit <-> column mapping directly), and
    sum_j C_j = |W_l|^2 + |b_l|^2 - |W_(l+1)|^2."""
    make, image = HOMOGENEOUS_NETS[name]
    model = make()
    x, y = problem(image)
    half_sum_mse(model(x), y).backward()
    for unit in hidden_units(model):
        (_, reader, block), = unit.outgoing  # a chain: one reader
        w, b, v = unit.incoming.weight, unit.incoming.bias, reader.weight
        inner_w = (w * w.grad).reshape(unit.size, -1).sum(1) + b * b.grad
        per_input = (v * v.grad).sum(0)
        inner_v = per_input.reshape(unit.size, block if isinstance(reader, nn.Linear) else -1).sum(1)
        torch.testing.assert_close(inner_w, inner_v, rtol=1e-10, atol=1e-14)
        assert float(inner_w.detach().abs().max()) > 1e-8  # not trivially zero
        norms = float((w.square().sum() + b.square().sum() - v.square().sum()).detach())
        assert layer_sums(unit_balance(model))[unit.name] == pytest.approx(norms, rel=1e-13, abs=1e-13)
    names = [u.name for u in hidden_units(model)]
    assert names == (["fc1", "fc2"] if name == "relu_mlp" else ["features.0", "features.3", "fc"])
    if name == "relu_cnn":
        assert [u.outgoing[0][2] for u in hidden_units(model)] == [1, 4, 1]  # the Flatten after a 3-channel 2x2 map
    summary = mean_abs(unit_balance(model))
    assert summary.keys() == set(names) and all(v >= 0 for v in summary.values())


def integrate_flow(model, x, y, t_stop, rtol=1e-12, atol=1e-14):
    holder: list = []
    flow = DormandPrince(model.parameters(), rtol=rtol, atol=atol, t_stop=t_stop)
    holder.append(flow)
    closure = closure_for(model, x, y, holder)
    while flow.t < t_stop:
        flow.step(closure)
    return flow


@pytest.mark.parametrize(("name", "t_stop"), [("relu_mlp", 0.3), ("relu_cnn", 0.02)])
def test_gradient_flow_conserves_every_unit_balance(name, t_stop):
    # Short times: every ReLU / max-pool kink the flow crosses costs the adaptive integrator rejected steps.
    make, image = HOMOGENEOUS_NETS[name]
    model = make()
    x, y = problem(image)
    start = unit_balance(model)
    weights = [p.detach().clone() for p in model.parameters()]
    flow = integrate_flow(model, x, y, t_stop)
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), weights, strict=True))
    assert flow.t == pytest.approx(t_stop) and moved > 1e-3  # the flow went somewhere
    assert max_diff(start, unit_balance(model)) <= 1e-9


def one_step_change(make, image: bool, eta: float) -> float:
    """max_j |C_j' - C_j| after one GD step of size eta from the net's initialisation."""
    model = make()
    x, y = problem(image)
    before = unit_balance(model)
    opt = GradientDescent(model.parameters(), lr=eta)
    closure_for(model, x, y, [opt])()
    opt.step()
    return max_diff(before, unit_balance(model))


@pytest.mark.parametrize(("make", "image", "why"), [(tanh_mlp, False, "not positively homogeneous"),
                                                    (bn_vgg, True, "BatchNorm2d")])
def test_where_the_identity_does_not_hold_the_balance_drifts(make, image, why):
    model = make()
    holds, reason = applies(model)
    assert not holds and why in reason
    # C_j moves at first order in eta (so already under gradient flow); where the identity holds, at second
    ratio = one_step_change(make, image, 1e-2) / one_step_change(make, image, 1e-3)
    assert 5 < ratio < 20
    assert one_step_change(relu_mlp, False, 1e-2) / one_step_change(relu_mlp, False, 1e-3) > 50
    x, y = problem(image)
    opt = GradientDescent(model.parameters(), lr=0.7)
    closure_for(model, x, y, [opt])()
    predicted = predict_balance(model, 0.7)  # what the identity would say: wrong here
    opt.step()
    assert max_diff(predicted, unit_balance(model)) > 1e-6


def test_tanh_balance_drifts_under_gradient_flow():
    model = tanh_mlp()
    x, y = problem(image=False)
    start = unit_balance(model)
    integrate_flow(model, x, y, t_stop=0.5)
    assert max_diff(start, unit_balance(model)) > 1e-4  # compare the ReLU net's 1e-9 above


def test_non_homogeneous_activations_and_normalisations_are_reported():
    lin = nn.Linear(3, 3, dtype=torch.float64)
    for module in (nn.GELU(), nn.Sigmoid(), nn.SiLU()):
        holds, reason = applies(nn.Sequential(lin, module, nn.Linear(3, 2)))
        assert not holds and type(module).__name__ in reason
    holds, reason = applies(nn.Sequential(lin, nn.LayerNorm(3), nn.ReLU(), nn.Linear(3, 2)))
    assert not holds and "LayerNorm" in reason
    assert applies(nn.Sequential(lin, nn.Dropout(0.1), nn.Identity(), nn.Linear(3, 2))) == (True, "")
    assert applies(nn.Sequential(nn.Linear(3, 2))) == (False, "no hidden units: the net has fewer than two "
                                                              "Linear/conv layers")


class Concatenate(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x):
        return torch.cat([x, self.inner(x)], dim=1)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x):
        return self.inner(self.inner(x))


class Branching(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize(("model", "says"), [
    (nn.Sequential(nn.Linear(3, 3), Concatenate(), nn.Linear(6, 2)), "operation 'cat' is not supported"),
    (nn.Sequential(nn.Linear(3, 3), Twice(), nn.Linear(3, 2)), "'1.inner' is called more than once"),
    (nn.Sequential(nn.Linear(3, 3), Branching(), nn.Linear(3, 2)), "cannot read the structure of Sequential"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(4, 2)), "needs an nn.Flatten"),
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Conv2d(4, 2, 1)), "'2' (Conv2d) after '0' (Linear)"),
    (nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2)), "groups=2"),
    (nn.Sequential(nn.Linear(3, 4), nn.Embedding(4, 2)), "'1' (Embedding) has parameters"),
    (nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (2, 2)), nn.Linear(2, 2)), "'1' (Unflatten) is not supported"),
    (nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(7, 2)), "not a multiple of the 3 units"),
    (nn.Sequential(nn.Linear(3, 4), nn.Flatten(0), nn.Linear(4, 2)), "must flatten dims 1..-1"),
])
def test_unsupported_architectures_are_refused_by_name(model, says):
    with pytest.raises(ValueError, match="balance: ") as info:
        unit_balance(model)
    assert says in str(info.value) and "\n" not in str(info.value)
    holds, reason = applies(model)
    assert not holds and says in reason


def test_prediction_needs_gradients():
    with pytest.raises(ValueError, match="no gradient"):
        predict_balance(relu_mlp(), 0.1)


# --- BalanceMonitor in a Lightning run ----------------------------------------------------------------

LR = 0.7


class TinyClassifier(L.LightningModule):
    """Full-batch GD by hand (manual optimisation with GradientDescent); one dummy batch per step."""

    def __init__(self, make=relu_mlp):
        super().__init__()
        self.automatic_optimization = False
        self.model = make()
        self.inputs, self.targets = problem(image=False)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(half_sum_mse(self.model(self.inputs), self.targets))
        optimizer.step()

    def configure_optimizers(self):
        return GradientDescent(self.parameters(), lr=LR)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(100)), batch_size=1)


def fit(module, monitor, max_steps, logger):
    trainer = L.Trainer(max_steps=max_steps, logger=logger, callbacks=[monitor], accelerator="cpu", devices=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    return trainer


def replay(make, steps):
    """The same GD outside Lightning: C_j at each step, and the largest identity error of each step."""
    model = make()
    x, y = problem(image=False)
    states, errors = {0: unit_balance(model)}, {}
    for step in range(1, steps + 1):
        model.zero_grad()
        half_sum_mse(model(x), y).backward()
        predicted = predict_balance(model, LR)
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(LR * p.grad)
        states[step] = unit_balance(model)
        errors[step] = max_diff(predicted, states[step])
    return states, errors


def test_balance_monitor_logs_contract_tags_matching_a_replay(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    monitor = BalanceMonitor(every_n_steps=2)
    module = TinyClassifier()
    trainer = fit(module, monitor, max_steps=5, logger=logger)
    states, _ = replay(relu_mlp, 5)
    metrics = trainer.callback_metrics
    assert float(metrics["balance/applies"]) == 1.0
    for layer in ("fc1", "fc2"):
        final = states[5][layer]
        assert float(metrics[f"balance/mean_abs_{layer}"]) == pytest.approx(float(final.abs().mean()), rel=1e-12)
        assert float(metrics[f"balance/sum_{layer}"]) == pytest.approx(float(final.sum()), rel=1e-12, abs=1e-12)
        ratio = float(final.abs().mean()) / float(states[0][layer].abs().mean())
        assert float(metrics[f"balance/mean_abs_ratio_{layer}"]) == pytest.approx(ratio, rel=1e-12)
        assert float(metrics[f"balance/pred_error_{layer}"]) <= 1e-13 * scale_of(module.model)
    torch.testing.assert_close(unit_balance(module.model), states[5], rtol=1e-12, atol=1e-14)

    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})  # 0: keep every event
    events.Reload()
    scalar_steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalar_steps["balance/mean_abs_fc1"] == [0, 2, 4, 5]  # every 2 steps, and at the end
    assert scalar_steps["balance/applies"] == [0, 2, 4, 5]
    assert scalar_steps["balance/pred_error_fc2"] == [2, 4, 5]
    for event in events.Scalars("balance/sum_fc2"):
        assert event.value == pytest.approx(float(states[event.step]["fc2"].sum()), rel=1e-6, abs=1e-6)
    assert sorted(events.Tags()["histograms"]) == ["balance/per_unit_fc1", "balance/per_unit_fc2"]
    histogram = events.Histograms("balance/per_unit_fc1")
    assert [h.step for h in histogram] == [0, 2, 4, 5] and histogram[0].histogram_value.num == 7

    restored = BalanceMonitor(every_n_steps=2)
    restored.load_state_dict(copy.deepcopy(monitor.state_dict()))
    saved = monitor.state_dict()  # step 5 is off the cadence of 2: the state of step 4, and step 5's tags
    assert saved.pop(OFF_CADENCE) == {"x": 5, "tags": sorted(tag for tag, steps in scalar_steps.items() if 5 in steps)}
    assert restored.state_dict() == saved and saved["last_step"] == 4
    assert restored.initial_mean_abs == pytest.approx({k: float(v.abs().mean()) for k, v in states[0].items()})


def test_balance_monitor_on_a_tanh_net_without_tensorboard():
    monitor = BalanceMonitor(every_n_steps=1)
    trainer = fit(TinyClassifier(tanh_mlp), monitor, max_steps=3, logger=False)
    states, _ = replay(tanh_mlp, 3)
    metrics = trainer.callback_metrics
    assert float(metrics["balance/applies"]) == 0.0
    assert not any(name.startswith("balance/pred_error") for name in metrics)
    assert float(metrics["balance/mean_abs_fc1"]) == pytest.approx(float(states[3]["fc1"].abs().mean()), rel=1e-12)
    assert monitor.last_step == 3 and monitor.last["balance/mean_abs_fc1"] == float(metrics["balance/mean_abs_fc1"])
    with pytest.raises(ValueError, match="every_n_steps"):
        BalanceMonitor(every_n_steps=0)


class TinyFlow(TinyClassifier):
    """Gradient flow (Dormand-Prince, lr 0) by hand: the closure, hence on_before_optimizer_step, runs at
    every stage of a step; the monitor's prediction is then 'C_j unchanged' and its error the flow's drift."""

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()

        def closure():
            optimizer.zero_grad()
            loss = half_sum_mse(self.model(self.inputs), self.targets)
            self.manual_backward(loss)
            return loss

        optimizer.step(closure=closure)

    def configure_optimizers(self):
        return DormandPrince(self.parameters(), rtol=1e-12, atol=1e-14)


def test_balance_monitor_under_gradient_flow():
    module = TinyFlow()
    start = unit_balance(module.model)
    trainer = fit(module, BalanceMonitor(every_n_steps=1), max_steps=4, logger=False)
    metrics = trainer.callback_metrics
    assert trainer.optimizers[0].t > 0 and float(metrics["balance/applies"]) == 1.0
    for layer in ("fc1", "fc2"):
        assert 0 <= float(metrics[f"balance/pred_error_{layer}"]) <= 1e-12
        assert float(metrics[f"balance/mean_abs_{layer}"]) == pytest.approx(float(start[layer].abs().mean()),
                                                                            rel=1e-10)


def test_balance_monitor_survives_values_too_large_to_bin(tmp_path):
    """A diverging run reaches finite C_j ~ 1e308, then nan: TensorBoard's own bins fail there ('The histogram
    is empty'), so the run would crash; the monitor logs the scalars and draws what numpy can bin."""
    module = TinyClassifier()
    with torch.no_grad():  # C_j = |w_in|^2 - |w_out|^2 from 1.5e306 to 7.4e307
        module.model.fc1.weight.copy_(5e152 * torch.arange(1.0, 8.0, dtype=torch.float64)[:, None].expand(7, 6))
    logger = TensorBoardLogger(tmp_path, name="run")
    fit(module, BalanceMonitor(every_n_steps=1), max_steps=2, logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("balance/mean_abs_fc1")] == [0, 1, 2]
    assert not math.isfinite(events.Scalars("balance/mean_abs_fc1")[2].value)  # it did diverge
    drawn = events.Histograms("balance/per_unit_fc1")
    assert [h.step for h in drawn] == [0] and drawn[0].histogram_value.max > 1e307  # nan cannot be binned


def test_a_histogram_that_cannot_be_binned_is_skipped(tmp_path):
    writer = SummaryWriter(tmp_path)
    for step, values in enumerate([[1e308, -1e308], [np.nan, 1.0], [np.inf, 1.0], [1e307, 1e308], [1.0, 2.0]]):
        log_histogram(writer, "h", np.array(values), step)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    assert [h.step for h in events.Histograms("h")] == [3, 4]
