"""The sequence data kinds: modular addition, sorting and copying, generated from a seed (no downloads)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from extensions.arch_kinds import ModularAdditionConfig, SequenceConfig, TransformerConfig
from extensions.sequence_data import distinct_sequences, load_copying, load_modular_addition, load_sorting
from shallownet import registry
from shallownet.checks import ConfigError


def data_cfg(schema, **fields):
    return OmegaConf.create({"data": OmegaConf.structured(schema(**fields))})


def test_modular_addition_holds_every_pair_once_with_its_sum():
    data = load_modular_addition(data_cfg(ModularAdditionConfig, modulus=7, train_fraction=0.4, seed=3))
    assert data.x.shape == (20, 3) and data.x_test.shape == (29, 3)  # round(0.4 * 49) = 20
    x, y = torch.cat([data.x, data.x_test]), torch.cat([data.y, data.y_test])
    assert x.dtype == y.dtype == torch.int64
    assert sorted(map(tuple, x[:, :2].tolist())) == [(a, b) for a in range(7) for b in range(7)]
    assert (x[:, 2] == 7).all() and torch.equal(y, (x[:, 0] + x[:, 1]) % 7)
    again = load_modular_addition(data_cfg(ModularAdditionConfig, modulus=7, train_fraction=0.4, seed=3))
    other = load_modular_addition(data_cfg(ModularAdditionConfig, modulus=7, train_fraction=0.4, seed=4))
    assert torch.equal(again.x, data.x) and not torch.equal(other.x, data.x)
    whole = load_modular_addition(data_cfg(ModularAdditionConfig, modulus=5, train_fraction=1.0))
    assert len(whole.x) == 25 and whole.x_test is None and whole.y_test is None


def test_sorting_and_copying_layout():
    cfg = data_cfg(SequenceConfig, vocab=3, length=4, n_train=30, n_test=20, seed=1)
    data = load_sorting(cfg)
    assert data.x.shape == (30, 7) and data.y.shape == (30, 4) and data.x_test.shape == (20, 7)
    for x, y in ((data.x, data.y), (data.x_test, data.y_test)):
        source = x[:, :4]
        assert torch.equal(y, source.sort(dim=1).values)
        assert torch.equal(x[:, 4:], y[:, :3])  # the answer's first tokens, teacher-forced
        assert int(x.min()) >= 0 and int(x.max()) <= 2
    rows = {tuple(r) for r in torch.cat([data.x[:, :4], data.x_test[:, :4]]).tolist()}
    assert len(rows) == 50  # distinct, train and test disjoint
    copying = load_copying(cfg)
    assert torch.equal(copying.x[:, :4], data.x[:, :4])  # the same draws
    assert torch.equal(copying.y, copying.x[:, :4]) and torch.equal(copying.x[:, 4:], copying.y[:, :3])


def test_distinct_sequences_cover_a_small_space_exactly():
    every = distinct_sequences(2, 3, 8, seed=0)
    assert sorted(map(tuple, every.tolist())) == [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    big = distinct_sequences(4, 8, 2000, seed=5)  # the default space, 65536 sequences
    assert len({tuple(r) for r in big.tolist()}) == 2000
    counts = torch.bincount(big.flatten(), minlength=4).double() / big.numel()
    assert (counts - 0.25).abs().max() < 0.02  # uniform tokens


@pytest.mark.parametrize(("schema", "fields", "key"), [
    (ModularAdditionConfig, {"modulus": 1}, "data.modulus"),
    (ModularAdditionConfig, {"train_fraction": 0.0}, "data.train_fraction"),
    (ModularAdditionConfig, {"train_fraction": 1.5}, "data.train_fraction"),
    (SequenceConfig, {"vocab": 1}, "data.vocab"),
    (SequenceConfig, {"length": 0}, "data.length"),
    (SequenceConfig, {"vocab": 2, "length": 3, "n_train": 6, "n_test": 3}, "data.n_train"),
    (SequenceConfig, {"length": 40}, "data.length"),
    (SequenceConfig, {"n_test": -1}, "data.n_test"),
])
def test_bad_data_keys_are_one_line(schema, fields, key):
    load = load_modular_addition if schema is ModularAdditionConfig else load_sorting
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load(data_cfg(schema, **fields))
    assert "\n" not in str(info.value)


def test_registered_kinds():
    entry = registry.model_kind("transformer")
    assert entry.schema is TransformerConfig and entry.default_data == "modular_addition"
    assert entry.loss == "half_sum_mse"
    assert registry.data_kind("modular_addition").schema is ModularAdditionConfig
    assert registry.data_kind("sorting").schema is registry.data_kind("copying").schema is SequenceConfig
