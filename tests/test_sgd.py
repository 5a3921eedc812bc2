"""Mini-batch SGD (optim.method=sgd): its trajectory against a plain torch.optim.SGD loop on the same batch
order, a resumed run against an uninterrupted one bit for bit, its batch order, threshold and refusals."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from shallownet.config import RunConfig, load_config
from shallownet.processes.stochastic import SGD
from shallownet.training import build, fit

DATA = ["data.n_points=10", "data.noise=0.1", "model.width=5", "train.dtype=float64"]


def run_config(*overrides: str):
    return load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", "train.tol=1e-300",
                                         "optim.method=sgd", *DATA, *overrides])


def reference_order(n: int, b: int, seed: int, steps: int, drop_last: bool) -> list[torch.Tensor]:
    """The batches of `steps` steps as the docs define them: per epoch one torch.randperm from a seeded
    generator, cut into batches of b (the short last one dropped with drop_last)."""
    generator, batches = torch.Generator().manual_seed(seed), []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        cut = list(order.split(b))
        if drop_last and len(cut[-1]) < b:
            cut.pop()
        batches.extend(cut)
    return batches[:steps]


@pytest.mark.parametrize("momentum, drop_last", [(0.0, False), (0.7, True)])
def test_sgd_is_torch_optim_sgd_on_the_same_batches_bit_for_bit(momentum, drop_last):
    steps, lr, b, seed = 23, 0.05, 4, 3
    pieces = build(run_config(f"train.max_steps={steps}", f"optim.lr={lr}", f"optim.momentum={momentum}",
                              f"optim.batch_size={b}", f"optim.batch_seed={seed}", f"optim.drop_last={drop_last}"))
    module = pieces.module
    reference = copy.deepcopy(module.model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=lr, momentum=momentum)
    for rows in reference_order(10, b, seed, steps, drop_last):
        optimizer.zero_grad()
        module.loss_fn(reference(module.data.x[rows]), module.data.y[rows]).backward()
        optimizer.step()
    start = [p.detach().clone() for p in module.model.parameters()]
    trainer = fit(module, pieces.datamodule, max_steps=steps)
    assert trainer.global_step == steps
    for ours, theirs, first in zip(module.model.parameters(), reference.parameters(), start, strict=True):
        assert torch.equal(ours, theirs)
        assert not torch.equal(ours, first)
    full = copy.deepcopy(module.model)  # the same run full batch differs: the batches matter
    gd = torch.optim.SGD(full.parameters(), lr=lr, momentum=momentum)
    full.load_state_dict({k: v for k, v in zip(full.state_dict(), start, strict=True)})
    for _ in range(steps):
        gd.zero_grad()
        module.loss_fn(full(module.data.x), module.data.y).backward()
        gd.step()
    assert not torch.equal(next(full.parameters()), next(module.model.parameters()))


def test_a_run_resumed_mid_epoch_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    keys = ["optim.lr=0.05", "optim.momentum=0.5", "optim.batch_size=4", "optim.batch_seed=11"]
    whole = build(run_config("train.max_steps=20", *keys))
    fit(whole.module, whole.datamodule, max_steps=20, callbacks=whole.callbacks)

    first = build(run_config("train.max_steps=20", *keys))
    trainer = fit(first.module, first.datamodule, max_steps=7, callbacks=first.callbacks)  # 7 = 2 epochs + 1 batch
    assert first.module.process.batches_per_epoch(10) == 3 and 7 % 3 != 0
    checkpoint = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(checkpoint)
    second = build(run_config("train.max_steps=20", *keys))
    fit(second.module, second.datamodule, max_steps=20, callbacks=second.callbacks, ckpt_path=checkpoint)
    for ours, theirs in zip(second.module.model.parameters(), whole.module.model.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    assert second.dynamics.last == whole.dynamics.last
    assert whole.dynamics.last["process/epoch"] == pytest.approx(20 / 3)



def test_the_batch_of_a_step_is_the_same_whoever_asks_first():
    process = SGD(lr=0.1, momentum=0.0, batch_size=3, batch_seed=5, drop_last=False)
    order = reference_order(10, 3, 5, 9, drop_last=False)
    assert [len(b) for b in order[:4]] == [3, 3, 3, 1]
    assert torch.equal(process.batch_indices(5, 10), order[5])  # epoch 1 drawn, epoch 0 skipped over
    assert torch.equal(process.batch_indices(5, 10), order[5])  # asking twice draws nothing more
    assert torch.equal(process.batch_indices(8, 10), order[8])
    with pytest.raises(ValueError, match="before the epoch"):
        process.batch_indices(0, 10)
    restored = SGD(lr=0.1, momentum=0.0, batch_size=3, batch_seed=5, drop_last=False)
    restored.load_state_dict(copy.deepcopy(process.state_dict()))
    assert torch.equal(restored.batch_indices(8, 10), order[8])
    assert process.clock(8) == {"process/epoch": 2.0}
    assert process.work(9) == {"grad_evals": 2.0 + 3 / 10, "batch_grads": 9}


def test_the_threshold_is_heavy_balls_on_the_full_batch_sharpness():
    assert SGD(lr=0.1, momentum=0.0, batch_size=2, batch_seed=0, drop_last=False).threshold() == 2 / 0.1
    process = SGD(lr=0.1, momentum=0.9, batch_size=2, batch_seed=0, drop_last=False)
    assert process.threshold() == pytest.approx((2 + 2 * 0.9) / 0.1)
    assert process.identities is None  # GD's one-step identities do not hold for batch gradients


@pytest.mark.parametrize("overrides, words", [
    (["optim.batch_size=11"], "'optim.batch_size' must be at most the 10 training rows, got 11"),
    (["optim.batch_size=0"], "optim.batch_size"),
    (["optim.momentum=1.0"], "optim.momentum"),
])
def test_bad_sgd_keys_are_refused_in_one_line_before_any_work(tmp_path, overrides, words):
    exe = [sys.executable, "-m", "shallownet", "train", f"output.root={tmp_path}", "optim.method=sgd", *DATA]
    result = subprocess.run([*exe, *overrides], capture_output=True, text=True)
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
