"""Per-unit balance on residual nets, per layer: in a BasicBlock without BatchNorm conv1's units satisfy the GD
identity of theory.md 8.4 to round-off; the units feeding a skip sum (the stem, every conv2, the projection
shortcuts) do not, and their C_j moves at first order in eta. Also `balance/applies_<layer>` in a real run."""

from __future__ import annotations

import torch

from extensions.balance import (
    balance_step,
    hidden_units,
    layer_applies,
    predict_balance,
    unit_balance,
)
from extensions.resnet import build_resnet_net
from shallownet import events
from shallownet.losses import half_sum_mse
from tests.test_arch_runs import COMMON, TINY
from tests.test_balance import scale_of

CLASSES = 3
CONV1S = ["stage1.block1.conv1", "stage1.block2.conv1", "stage2.block1.conv1", "stage2.block2.conv1"]
SKIP_FED = ["conv1", "stage1.block1.conv2", "stage1.block2.conv2", "stage2.block1.conv2",
            "stage2.block1.shortcut.conv", "stage2.block2.conv2"]


def resnet(batch_norm=False, seed=0):
    return build_resnet_net((1, 8, 8), CLASSES, depth=2, width=3, stages=2, batch_norm=batch_norm, seed=seed)


def problem(n=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, CLASSES, (n,), generator=gen)


def gd_step(model, eta):
    """One GD step; returns (C_j before, the identity's prediction, C_j after)."""
    x, y = problem()
    before = unit_balance(model)
    model.zero_grad()
    half_sum_mse(model(x), y).backward()
    predicted = predict_balance(model, eta)
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(eta * p.grad)
    return before, predicted, unit_balance(model)


def test_the_layers_their_readers_and_where_the_identity_applies():
    model = resnet()
    units = {u.name: u for u in hidden_units(model)}
    assert sorted(units) == sorted(CONV1S + SKIP_FED)  # `out` reads the network's output: not hidden
    for name in CONV1S:
        assert [reader for reader, _, _ in units[name].outgoing] == [name.replace("conv1", "conv2")]
        assert layer_applies(model)[name] == (True, "")
    for name in SKIP_FED:
        holds, why = layer_applies(model)[name]
        assert not holds and f"the units of '{name}' feed a skip sum" in why
    # the stem's outputs travel the residual stream: read by every block of stage 1 and stage 2's first one
    assert [reader for reader, _, _ in units["conv1"].outgoing] == [
        "stage1.block1.conv1", "stage1.block2.conv1", "stage2.block1.conv1", "stage2.block1.shortcut.conv"]
    assert [reader for reader, _, _ in units["stage2.block2.conv2"].outgoing] == ["out"]
    # with BatchNorm, conv1's units are normalised as well
    bn = layer_applies(resnet(batch_norm=True))
    assert not bn["stage1.block1.conv1"][0] and "BatchNorm2d" in bn["stage1.block1.conv1"][1]


def test_gd_identity_holds_to_round_off_for_conv1_units_and_fails_for_skip_fed_ones():
    model, eta = resnet(), 0.5
    scale = scale_of(model)
    for _ in range(3):
        before, predicted, after = gd_step(model, eta)
        for name in CONV1S:
            assert float((predicted[name] - after[name]).abs().max()) <= 1e-13 * scale
            assert float((before[name] - after[name]).abs().max()) >= 1e-6 * scale  # C_j did move
        for name in SKIP_FED:
            assert float((predicted[name] - after[name]).abs().max()) >= 1e-6 * scale, name


def test_skip_fed_balance_moves_at_first_order_in_eta():
    """Where the identity holds C_j moves by eta^2 (...); where it does not, at first order: 10x eta gives ~10x
    the change for skip-fed units, ~100x for conv1's."""
    def change(eta):
        before, _, after = gd_step(resnet(), eta)
        return before, after

    (small_before, small_after), (big_before, big_after) = change(1e-4), change(1e-3)
    for name in CONV1S:
        ratio = (big_after[name] - big_before[name]).abs().max() / (small_after[name] - small_before[name]).abs().max()
        assert 80 < float(ratio) < 120
    for name in SKIP_FED:
        ratio = (big_after[name] - big_before[name]).abs().max() / (small_after[name] - small_before[name]).abs().max()
        assert 8 < float(ratio) < 12, name


def test_euler_identity_per_unit_holds_only_where_the_rescaling_is_a_symmetry():
    """<w_j, dL/dw_j> = <v_j, dL/dv_j> (the derivative of the loss along the rescaling of unit j) for conv1's
    units; for skip-fed ones the rescaling changes the function and the two sides differ."""
    model = resnet()
    x, y = problem()
    half_sum_mse(model(x), y).backward()
    for unit in hidden_units(model):
        w, b = unit.incoming.weight, unit.incoming.bias
        inner_w = (w * w.grad).reshape(unit.size, -1).sum(1) + b * b.grad
        inner_v = sum((v.weight * v.weight.grad).sum(0).reshape(unit.size, -1).sum(1) for _, v, _ in unit.outgoing)
        gap, size = float((inner_w - inner_v).detach().abs().max()), float(inner_w.detach().abs().max())
        assert size > 1e-8
        if unit.name in CONV1S:
            assert gap <= 1e-12 * max(size, 1.0)
        else:
            assert gap > 1e-4 * size, unit.name
    assert balance_step(model).keys() == set(CONV1S + SKIP_FED)


def test_balance_monitor_on_a_resnet_run(cli):
    code, out, err, dirs = cli("train", *TINY["resnet"], *COMMON, "optim.lr=0.1", "monitor.balance.every_n_steps=2")
    assert code == 0, err
    metrics = events.read_metrics(dirs[0])
    assert metrics["balance/applies"][1].tolist() == [0.0] * 4  # steps 0, 2, 4, 6
    # the tiny resnet: depth 1, stages 2
    for name in ("stage1.block1.conv1", "stage2.block1.conv1"):
        assert metrics[f"balance/applies_{name}"][1].tolist() == [1.0] * 4
        steps, errors = metrics[f"balance/pred_error_{name}"]
        assert steps.tolist() == [2, 4, 6] and errors.max() <= 1e-12
    for name in ("conv1", "stage1.block1.conv2", "stage2.block1.conv2", "stage2.block1.shortcut.conv"):
        assert metrics[f"balance/applies_{name}"][1].tolist() == [0.0] * 4
        assert f"balance/pred_error_{name}" not in metrics and f"balance/mean_abs_{name}" in metrics


def test_nets_without_a_unit_structure_are_refused_before_the_run(cli):
    code, out, err, dirs = cli("train", *TINY["transformer"], *COMMON, "monitor.balance.every_n_steps=1")
    assert code == 2 and not dirs and "monitor.balance.every_n_steps" in err
    assert "cannot read the structure of Transformer" in err
