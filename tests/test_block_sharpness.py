"""monitor.block_sharpness: per-block sharpness against the dense Hessian's diagonal blocks, warm starts, and
its tags in a real `shallownet train` run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from extensions.mlp import mlp
from shallownet import events
from shallownet.callbacks.block_sharpness import BLOCK_HVP_COUNT, BlockSharpnessMonitor, net_blocks
from shallownet.curvature import dense_hessian, trainable_parameters
from shallownet.losses import half_sum_mse
from tests.test_arch_runs import COMMON, TINY
from tests.test_transformer import tiny


class Wrapper(nn.Module):
    """What the monitor reads of a FullBatchModule: `model`, `loss_fn`, `curvature_data()`."""

    def __init__(self, model, data, loss_fn):
        super().__init__()
        self.model, self.data, self.loss_fn = model, data, loss_fn

    def forward(self, x):
        return self.model(x)

    def curvature_data(self):
        return self.data


def tiny_mlp():
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(12, d, generator=gen, dtype=torch.float64) for d in (3, 2))
    return mlp([3, 5, 4, 2], "tanh", seed=1), (x, y), lambda out, t: 0.5 * ((out - t) ** 2).mean()


def tiny_transformer():
    model, data = tiny()
    return model, data, half_sum_mse


def dense_block_tops(model, data, loss_fn) -> dict[str, float]:
    """lambda_max of each top-level block's sub-Hessian, by eigvalsh of the dense Hessian's diagonal blocks."""
    hessian = dense_hessian(model, loss_fn, data)
    names = [name for name, p in trainable_parameters(model).items() for _ in range(p.numel())]
    tops = {}
    for block in dict.fromkeys(name.split(".")[0] for name in names):
        index = torch.tensor([i for i, name in enumerate(names) if name.split(".")[0] == block])
        tops[block] = float(torch.linalg.eigvalsh(hessian[index][:, index])[-1])
    return tops, float(torch.linalg.eigvalsh(hessian)[-1])


@pytest.mark.parametrize("make", [tiny_mlp, tiny_transformer])
def test_block_sharpness_equals_the_dense_sub_hessians(make):
    model, data, loss_fn = make()
    module = Wrapper(model, data, loss_fn)
    monitor = BlockSharpnessMonitor(tol=1e-10)
    values = monitor.measure(None, module)
    expected, sharpness = dense_block_tops(model, data, loss_fn)
    assert len(expected) >= 3
    assert {tag: value for tag, value in values.items() if tag != BLOCK_HVP_COUNT} == pytest.approx(
        {f"curvature/block_sharpness_{block}": top for block, top in expected.items()}, rel=1e-8, abs=1e-10)
    assert max(expected.values()) <= sharpness + 1e-10  # interlacing, and the blocks are not the whole
    assert len(set(round(v, 6) for v in expected.values())) == len(expected)
    # warm starts, per block: at the same point each block's previous eigenvector is already converged
    cold = values[BLOCK_HVP_COUNT]
    again = monitor.measure(None, module)
    assert again[BLOCK_HVP_COUNT] == len(expected) < cold
    assert again == pytest.approx(values | {BLOCK_HVP_COUNT: len(expected)}, rel=1e-9)


def test_blocks_are_the_nets_top_level_modules_and_depth_goes_deeper():
    model, data, loss_fn = tiny_transformer()
    module = Wrapper(model, data, loss_fn)
    assert net_blocks(module) == {name: f"model.{name}" for name in ("embed", "positions", "blocks", "norm", "out")}
    assert list(net_blocks(module, depth=2))[2:4] == ["blocks.0"] + ["norm.weight"]
    assert net_blocks(model) == {name: name for name in ("embed", "positions", "blocks", "norm", "out")}


def test_block_sharpness_tags_in_a_train_run(cli):
    code, out, err, dirs = cli("train", *TINY["transformer"], *COMMON, "optim.lr=0.1",
                               "monitor.sharpness.every_n_steps=3", "monitor.block_sharpness.every_n_steps=3")
    assert code == 0, err
    metrics = events.read_metrics(dirs[0])
    steps, sharpness = metrics["curvature/sharpness"]
    for block in ("embed", "positions", "blocks", "norm", "out"):
        block_steps, values = metrics[f"curvature/block_sharpness_{block}"]
        assert block_steps.tolist() == steps.tolist() == [0, 3, 6]
        assert (values > 0).all() and (values <= sharpness * (1 + 1e-8)).all()
    assert metrics[BLOCK_HVP_COUNT][1].min() >= 5


def test_bad_block_sharpness_keys_are_refused(cli):
    code, out, err, dirs = cli("train", *TINY["transformer"], *COMMON, "monitor.block_sharpness.depth=0")
    assert code == 2 and "monitor.block_sharpness.depth" in err and not dirs
