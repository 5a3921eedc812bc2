"""Real data and models: the digits and CIFAR-10 loaders (CIFAR on small files written here in the exact
python-pickle format), the registered model kinds mlp / cnn / vgg, and their one-line ConfigErrors."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from extensions import real_kinds
from extensions.mlp import ACTIVATIONS
from extensions.real_data import load_cifar10
from extensions.real_kinds import (
    ACTIVATIONS as ACTIVATION_NAMES,
)
from extensions.real_kinds import (
    CIFAR_TEST_FILE,
    CIFAR_TRAIN_FILES,
    Cifar10Config,
    CNNConfig,
    DigitsConfig,
    MLPConfig,
    VGGConfig,
)
from shallownet import registry
from shallownet.config import ConfigError
from shallownet.losses import half_sum_mse
from shallownet.registry import FullBatchData

BATCH_SIZES = (3, 2, 4, 3, 2)  # examples in data_batch_1..5
TEST_SIZE = 4
LABEL_NAMES = [name.encode() for name in
               ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]


# --- helpers ----------------------------------------------------------------------------------------

def write_pickle(path, content, protocol=2):
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=protocol)


def cifar_batch(n: int, seed: int, label: bytes) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": label, b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}


def write_cifar(folder, protocol=2) -> dict:
    """A complete CIFAR-10 python folder with a few examples per batch; returns {file name: batch dict}."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, (name, n) in enumerate(zip(CIFAR_TRAIN_FILES, BATCH_SIZES, strict=True)):
        batches[name] = cifar_batch(n, i, f"training batch {i + 1} of 5".encode())
    batches[CIFAR_TEST_FILE] = cifar_batch(TEST_SIZE, 99, b"testing batch 1 of 1")
    for name, batch in batches.items():
        write_pickle(folder / name, batch, protocol)
    write_pickle(folder / "batches.meta", {b"num_cases_per_batch": 3, b"label_names": LABEL_NAMES,
                                           b"num_vis": 3072}, protocol)
    return batches


def cifar(root, n_train=7, n_test=2, dtype=torch.float64) -> FullBatchData:
    cfg = OmegaConf.create({"data": OmegaConf.structured(Cifar10Config(root=str(root), n_train=n_train,
                                                                       n_test=n_test))})
    return load_cifar10(cfg, dtype)


def one_line_error(call, *names) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for name in names:
        assert name in message, message
    return message


class Escape:
    """Unpickling this would create a folder: the loader must refuse before calling anything."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


# --- CIFAR-10 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_loads_the_first_examples_standardised_with_training_statistics(tmp_path, protocol):
    batches = write_cifar(tmp_path / "cifar", protocol)
    data = cifar(tmp_path / "cifar", n_train=7, n_test=2)
    raw = np.concatenate([batches[name][b"data"] for name in CIFAR_TRAIN_FILES])[:7].astype(np.float64)
    labels = sum((batches[name][b"labels"] for name in CIFAR_TRAIN_FILES), [])[:7]
    raw_test = batches[CIFAR_TEST_FILE][b"data"][:2].astype(np.float64)

    assert data.x.shape == (7, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.x.dtype == torch.float64 and data.y.dtype == torch.int64 and data.y_test.dtype == torch.int64
    assert data.y.tolist() == labels and data.y_test.tolist() == batches[CIFAR_TEST_FILE][b"labels"][:2]
    mean, std = raw.mean(axis=0), raw.std(axis=0)  # numpy's population std, as Cohen et al.
    std = np.where(std > 0, std, 1.0)
    # row layout of a CIFAR image: 1024 red, 1024 green, 1024 blue, each 32 x 32 row-major = [3, 32, 32]
    np.testing.assert_allclose(data.x.reshape(7, -1).numpy(), (raw - mean) / std, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.x_test.reshape(2, -1).numpy(), (raw_test - mean) / std, rtol=0, atol=1e-12)
    assert data.x[1, 2, 3, 4] == pytest.approx((raw[1, 2 * 1024 + 3 * 32 + 4] - mean[2 * 1024 + 3 * 32 + 4])
                                               / std[2 * 1024 + 3 * 32 + 4], abs=1e-12)
    flat = data.x.reshape(7, -1)
    assert flat.mean(dim=0).abs().max() < 1e-12
    assert (flat.std(dim=0, correction=0) - 1).abs().max() < 1e-12


def test_cifar_float32_and_no_test_split(tmp_path):
    write_cifar(tmp_path / "cifar")
    data = cifar(tmp_path / "cifar", n_train=sum(BATCH_SIZES), n_test=0, dtype=torch.float32)
    assert data.x.shape == (sum(BATCH_SIZES), 3, 32, 32) and data.x.dtype == torch.float32
    assert data.x_test is None and data.y_test is None


def test_cifar_reads_only_the_batches_it_needs(tmp_path):
    write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "data_batch_5").write_bytes(b"not a pickle")  # never opened for 3 examples
    assert cifar(tmp_path / "cifar", n_train=3, n_test=1).x.shape[0] == 3
    one_line_error(lambda: cifar(tmp_path / "cifar", n_train=sum(BATCH_SIZES)), "data_batch_5", "malformed")


@pytest.mark.parametrize("missing", ["data_batch_1", "data_batch_4", "test_batch", "batches.meta"])
def test_cifar_missing_file_names_it(tmp_path, missing):
    write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / missing).unlink()
    message = one_line_error(lambda: cifar(tmp_path / "cifar"), str(tmp_path / "cifar" / missing), "missing")
    assert "data_batch_1..5" in message


def test_cifar_missing_or_unset_folder(tmp_path):
    one_line_error(lambda: cifar(tmp_path / "nowhere"), "data.root", str(tmp_path / "nowhere"))
    one_line_error(lambda: load_cifar10(SimpleNamespace(data=Cifar10Config()), torch.float64), "data.root", "None")


def _corrupt(kind, tmp_path):
    good = cifar_batch(3, 0, b"training batch 1 of 5")
    if kind == "truncated":
        raw = pickle.dumps(good, protocol=2)
        return raw[: len(raw) // 2]
    if kind == "garbage":
        return b"\x00\x01 this is not a pickle"
    if kind == "empty":
        return b""
    content = {
        "not a dict": [good[b"data"], good[b"labels"]],
        "no labels": {b"data": good[b"data"]},
        "float data": {**good, b"data": good[b"data"].astype(np.float32)},
        "wrong width": {**good, b"data": good[b"data"][:, :100]},
        "label count": {**good, b"labels": good[b"labels"][:2]},
        "label range": {**good, b"labels": [0, 10, 1]},
        "label type": {**good, b"labels": [b"a", b"b", b"c"]},
        "foreign global": {**good, b"labels": Escape(str(tmp_path / "escaped"))},
    }[kind]
    return pickle.dumps(content, protocol=2)


CORRUPTIONS = ["truncated", "garbage", "empty", "not a dict", "no labels", "float data", "wrong width",
               "label count", "label range", "label type", "foreign global"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_cifar_malformed_batch_is_one_line_naming_the_file(tmp_path, kind):
    write_cifar(tmp_path / "cifar")
    path = tmp_path / "cifar" / "data_batch_1"
    path.write_bytes(_corrupt(kind, tmp_path))
    message = one_line_error(lambda: cifar(tmp_path / "cifar"), str(path), "malformed", "b'data'")
    if kind == "foreign global":
        assert "refusing to unpickle posix.mkdir" in message or "refusing to unpickle os.mkdir" in message
        assert not (tmp_path / "escaped").exists()


def test_cifar_malformed_meta_and_too_many_examples(tmp_path):
    write_cifar(tmp_path / "cifar")
    one_line_error(lambda: cifar(tmp_path / "cifar", n_train=sum(BATCH_SIZES) + 1), "data.n_train",
                   str(sum(BATCH_SIZES)))
    one_line_error(lambda: cifar(tmp_path / "cifar", n_test=TEST_SIZE + 1), "data.n_test", "test_batch")
    one_line_error(lambda: cifar(tmp_path / "cifar", n_train=0), "data.n_train")
    write_pickle(tmp_path / "cifar" / "batches.meta", {b"label_names": LABEL_NAMES[:3]})
    one_line_error(lambda: cifar(tmp_path / "cifar"), "batches.meta", "label_names")


# --- digits -------------------------------------------------------------------------------------------

def digits(**fields) -> FullBatchData:
    return registry.data_kind("digits").build(OmegaConf.create({"data": OmegaConf.structured(DigitsConfig(**fields))}),
                                             torch.float64)


def test_digits_default_split_and_standardisation():
    data = digits()
    assert data.x.shape == (1500, 1, 8, 8) and data.x_test.shape == (297, 1, 8, 8)
    assert data.y.dtype == torch.int64 and sorted(set(data.y.tolist())) == list(range(10))
    flat = data.x.reshape(1500, -1)
    std = flat.std(dim=0, correction=0)
    assert flat.mean(dim=0).abs().max() < 1e-12
    assert ((std - 1).abs() < 1e-12).sum() == (std > 0).sum() and (std[std <= 0] == 0).all()
    from sklearn.datasets import load_digits

    raw = torch.tensor(load_digits().images, dtype=torch.float64).reshape(1797, -1)
    mean, raw_std = raw[:1500].mean(dim=0), raw[:1500].std(dim=0, correction=0)
    expected = (raw[1500:] - mean) / torch.where(raw_std > 0, raw_std, torch.ones_like(raw_std))
    torch.testing.assert_close(data.x_test.reshape(297, -1), expected, rtol=0, atol=1e-12)


def test_digits_subsets_and_errors():
    small = digits(n_train=100, n_test=0)
    assert small.x.shape == (100, 1, 8, 8) and small.x_test is None
    assert digits(n_test=797).x.shape[0] == 1000
    one_line_error(lambda: digits(n_train=1501), "data.n_train", "1500")
    one_line_error(lambda: digits(n_test=1797), "data.n_test")


# --- models -------------------------------------------------------------------------------------------

def build(kind: str, schema, data: FullBatchData, **fields):
    cfg = OmegaConf.create({"model": OmegaConf.structured(schema(**fields))})
    return registry.model_kind(kind).build(cfg, data)


@pytest.fixture(scope="module")
def small_digits():
    return digits(n_train=64, n_test=16)


def test_registered_kinds_and_defaults():
    assert real_kinds.LOSS == "half_sum_mse"
    for kind in ("mlp", "cnn", "vgg"):
        entry = registry.model_kind(kind)
        assert entry.default_data == "digits" and entry.loss == "half_sum_mse" and entry.convergence == "loss"
    assert registry.data_kind("digits").schema is DigitsConfig
    assert registry.data_kind("cifar10").schema is Cifar10Config
    merged = OmegaConf.merge(OmegaConf.structured(MLPConfig), OmegaConf.from_dotlist(["widths=[3,4]"]))
    assert list(merged.widths) == [3, 4] and merged.activation == "relu"
    assert OmegaConf.structured(VGGConfig).batch_norm is False and OmegaConf.structured(Cifar10Config).root is None


@pytest.mark.parametrize(("kind", "schema", "fields"), [
    ("mlp", MLPConfig, {"widths": [20, 10]}),
    ("mlp", MLPConfig, {"widths": [8], "activation": "tanh"}),
    ("cnn", CNNConfig, {"channels": [4, 6]}),
    ("vgg", VGGConfig, {"channels": [4, 8], "hidden": 16}),
    ("vgg", VGGConfig, {"channels": [4], "convs_per_stage": 1, "hidden": 0, "batch_norm": True}),
])
def test_models_build_seeded_in_the_data_dtype(small_digits, kind, schema, fields):
    state = torch.random.get_rng_state()
    model = build(kind, schema, small_digits, **fields)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    again = build(kind, schema, small_digits, **fields)
    other = build(kind, schema, small_digits, seed=1, **fields)
    for p, q, r in zip(model.parameters(), again.parameters(), other.parameters(), strict=True):
        assert p.dtype == torch.float64 and torch.equal(p, q)
        assert not torch.equal(p, r) or p.dim() == 1 and (p.eq(0).all() or p.eq(1).all())  # BN starts at 0 / 1
    out = model(small_digits.x)
    assert out.shape == (64, 10) and out.dtype == torch.float64
    assert torch.isfinite(half_sum_mse(out, small_digits.y))
    as_float32 = FullBatchData(small_digits.x.float(), small_digits.y)
    assert all(p.dtype == torch.float32 for p in build(kind, schema, as_float32, **fields).parameters())


def test_model_structure_names_and_flattening(small_digits):
    mlp = build("mlp", MLPConfig, small_digits, widths=[20, 10])
    assert [name for name, _ in mlp.named_children()] == ["flatten", "fc1", "act1", "fc2", "act2", "out"]
    from extensions.mlp import mlp as plain_mlp

    plain = plain_mlp([64, 20, 10, 10], "relu", seed=0)  # the same init as the plain builder
    assert all(torch.equal(p, q) for p, q in zip(mlp.parameters(), plain.parameters(), strict=True))
    cnn = build("cnn", CNNConfig, small_digits)
    assert [name for name, _ in cnn.named_children()] == ["conv1", "act1", "pool1", "conv2", "act2", "pool2",
                                                          "flatten", "out"]
    assert cnn.out.in_features == 32 * 2 * 2
    vgg = build("vgg", VGGConfig, small_digits, batch_norm=True)
    names = [name for name, _ in vgg.named_children()]
    assert names[:4] == ["conv1_1", "bn1_1", "act1_1", "conv1_2"] and names[-4:] == ["flatten", "fc1", "act_fc1",
                                                                                         "out"]
    assert vgg.conv1_1.bias is None and isinstance(vgg.bn1_1, torch.nn.BatchNorm2d)
    assert build("vgg", VGGConfig, small_digits).conv1_1.bias is not None
    assert vgg.fc1.in_features == 128  # 8x8 -> 4x4 -> 2x2 -> 1x1 after three pools
    outputs = build("mlp", MLPConfig, FullBatchData(small_digits.x, small_digits.y.clamp(max=4)), widths=[5])
    assert outputs.out.out_features == 5
    assert build("mlp", MLPConfig, small_digits, widths=[5], num_outputs=3).out.out_features == 3


def test_model_config_errors_are_one_line(small_digits):
    flat = FullBatchData(small_digits.x.reshape(64, -1), small_digits.y)
    one_line_error(lambda: build("cnn", CNNConfig, flat), "model.kind", "[N, C, H, W]")
    one_line_error(lambda: build("vgg", VGGConfig, flat), "model.kind")
    one_line_error(lambda: build("mlp", MLPConfig, small_digits, activation="gelu"), "model.activation", "gelu")
    one_line_error(lambda: build("cnn", CNNConfig, small_digits, activation="sigmoid"), "model.activation")
    one_line_error(lambda: build("mlp", MLPConfig, small_digits, widths=[]), "model.widths")
    one_line_error(lambda: build("mlp", MLPConfig, small_digits, widths=[4, 0]), "model.widths")
    one_line_error(lambda: build("cnn", CNNConfig, small_digits, kernel_size=2), "model.kernel_size")
    one_line_error(lambda: build("vgg", VGGConfig, small_digits, convs_per_stage=0), "model.convs_per_stage")
    one_line_error(lambda: build("vgg", VGGConfig, small_digits, hidden=-1), "model.hidden")
    one_line_error(lambda: build("mlp", MLPConfig, small_digits, num_outputs=0), "model.num_outputs")


def test_schemas_validate_before_any_work(tmp_path):
    """validate(cfg) on each schema (the whole run config): the same one-line errors, no file opened."""
    def run_cfg(model=None, data=None):
        return OmegaConf.create({"model": OmegaConf.structured(model or MLPConfig()),
                                 "data": OmegaConf.structured(data or DigitsConfig())})

    MLPConfig.validate(run_cfg())
    DigitsConfig.validate(run_cfg())
    CNNConfig.validate(run_cfg(CNNConfig()))
    VGGConfig.validate(run_cfg(VGGConfig()))
    MLPConfig.validate(MLPConfig())  # the section itself works too
    one_line_error(lambda: MLPConfig.validate(run_cfg(MLPConfig(activation="gelu"))), "model.activation")
    one_line_error(lambda: VGGConfig.validate(run_cfg(VGGConfig(channels=[]))), "model.channels")
    one_line_error(lambda: DigitsConfig.validate(run_cfg(data=DigitsConfig(n_train=0))), "data.n_train")
    write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "data_batch_2").write_bytes(b"garbage: only load() opens the files")
    Cifar10Config.validate(run_cfg(data=Cifar10Config(root=str(tmp_path / "cifar"))))
    one_line_error(lambda: Cifar10Config.validate(run_cfg(data=Cifar10Config(root=str(tmp_path / "cifar"),
                                                                             n_train=10**9))), "data.n_train")
    (tmp_path / "cifar" / "data_batch_2").unlink()
    one_line_error(lambda: Cifar10Config.validate(run_cfg(data=Cifar10Config(root=str(tmp_path / "cifar")))),
                   "data_batch_2", "missing")


def test_the_schemas_list_the_activations_the_models_build():
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)
