"""The real nets' registry entries (light: no torch at import): model kinds mlp, cnn, vgg
(extensions/real_models.py), data kinds digits and cifar10 (extensions/real_data.py) and the monitor
balance (extensions/balance.py). Omegaconf structured configs: no `from __future__ import annotations`.
"""

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035  (omegaconf reads typing.List)

from shallownet.checks import ConfigError, require, require_memory
from shallownet.monitors import require_cadence
from shallownet.registry import register_data, register_model, register_monitor

# the keys of extensions.mlp.ACTIVATIONS (a test keeps them equal)
ACTIVATIONS = ("tanh", "relu", "leaky_relu")
LOSS = "half_sum_mse"
DEFAULT_DATA = "digits"

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_META_FILE = "batches.meta"
CIFAR_SHAPE = (3, 32, 32)
CIFAR_CLASSES = 10
CIFAR_FORMAT = "CIFAR-10's python batches (data_batch_1..5, test_batch, batches.meta)"
DIGITS_TOTAL = 1797


def data_section(cfg: Any) -> Any:
    """The `data:` section, whether the whole run config or the section itself is passed."""
    return getattr(cfg, "data", cfg)


@dataclass
class DigitsConfig:
    n_train: Optional[int] = None  # noqa: UP045  first n training examples; null: all 1797 - n_test
    n_test: int = 297  # the last n_test images, held out for accuracy (0: no test split)

    @staticmethod
    def validate(cfg: Any) -> None:
        """Range checks of the `data:` section (the whole run config or the section); reads nothing."""
        d = data_section(cfg)
        require(0 <= d.n_test < DIGITS_TOTAL, "data.n_test", f"an integer in [0, {DIGITS_TOTAL - 1}]", d.n_test)
        available = DIGITS_TOTAL - d.n_test
        require(d.n_train is None or 1 <= d.n_train <= available, "data.n_train",
                 f"null or an integer in [1, {available}] (1797 digits minus data.n_test={d.n_test})", d.n_train)
        if importlib.util.find_spec("sklearn") is None:
            raise ConfigError("config key 'data.kind' digits needs scikit-learn (pip install scikit-learn), "
                              "which is not installed")


@dataclass
class Cifar10Config:
    root: Optional[str] = None  # noqa: UP045  folder holding data_batch_1..5, test_batch, batches.meta
    n_train: int = 5000  # the first n examples of data_batch_1, 2, ... (Cohen et al.: 5000)
    n_test: int = 1000  # the first n examples of test_batch (0: no test split)

    @staticmethod
    def validate(cfg: Any) -> None:
        """Range checks and that every file is there (opens none: load() checks their contents)."""
        d = data_section(cfg)
        require(d.root is not None and str(d.root) != "", "data.root", f"a folder holding {CIFAR_FORMAT}", d.root)
        folder = Path(str(d.root)).expanduser()
        require(folder.is_dir(), "data.root", f"an existing folder holding {CIFAR_FORMAT}", str(d.root))
        for name in (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE):
            if not (folder / name).is_file():
                raise ConfigError(f"CIFAR-10 file {folder / name} is missing; data.root must hold {CIFAR_FORMAT}")
        require(d.n_train >= 1, "data.n_train", "an integer >= 1", d.n_train)
        require(d.n_test >= 0, "data.n_test", "an integer >= 0", d.n_test)
        require_memory(8.0 * 2 * 3072 * (d.n_train + d.n_test), "the CIFAR-10 images (float64, raw and scaled)",
                        "data.n_train")


def model_section(cfg: Any) -> Any:
    """The `model:` section, whether the whole run config or the section itself is passed."""
    return getattr(cfg, "model", cfg)


def _check_common(section: Any) -> None:
    if hasattr(section, "activation"):  # also checked on load (choices); the builders check sections built in code
        require(section.activation in ACTIVATIONS, "model.activation", f"one of {', '.join(ACTIVATIONS)}",
                 section.activation)
    require(section.num_outputs is None or section.num_outputs >= 1, "model.num_outputs",
             "null or an integer >= 1", section.num_outputs)
    require_init_scale(section)


def require_init_scale(section: Any) -> None:
    scale = section.init_scale
    require(math.isfinite(scale) and scale > 0, "model.init_scale", "a finite number > 0", scale)


def _positive_list(values: Any, key: str) -> list[int]:
    values = list(values)
    require(len(values) >= 1 and all(int(v) >= 1 for v in values), key, "a non-empty list of integers >= 1",
             values)
    return [int(v) for v in values]


@dataclass
class MLPConfig:
    widths: List[int] = field(default_factory=lambda: [200, 200])  # noqa: UP006  hidden widths
    activation: str = "relu"  # the nonlinearity after each hidden layer
    seed: int = 0  # random seed of PyTorch's default initialisation
    init_scale: float = 1.0  # every parameter of that initialisation times this (a sweep cell rerun alone)
    num_outputs: Optional[int] = None  # noqa: UP045  null: number of classes in the labels

    choices = {"activation": ACTIVATIONS}

    @staticmethod
    def validate(cfg: Any) -> None:
        """Range checks of the `model:` section (the whole run config or the section)."""
        m = model_section(cfg)
        _positive_list(m.widths, "model.widths")
        _check_common(m)


@dataclass
class CNNConfig:
    channels: List[int] = field(default_factory=lambda: [32, 32])  # noqa: UP006  one conv + pool each
    kernel_size: int = 3  # odd; 'same' padding
    activation: str = "relu"  # the nonlinearity after each hidden layer
    seed: int = 0  # random seed of PyTorch's default initialisation
    init_scale: float = 1.0  # every parameter of that initialisation times this (a sweep cell rerun alone)
    num_outputs: Optional[int] = None  # noqa: UP045  null: number of classes in the labels

    choices = {"activation": ACTIVATIONS}

    @staticmethod
    def validate(cfg: Any) -> None:
        m = model_section(cfg)
        _positive_list(m.channels, "model.channels")
        require(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size", "an odd integer >= 1",
                 m.kernel_size)
        _check_common(m)


@dataclass
class VGGConfig:
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])  # noqa: UP006  one stage each
    convs_per_stage: int = 2  # 3x3 convolutions (+ BatchNorm) + ReLU per stage, then a 2x2 max-pool
    hidden: int = 128  # width of the fully connected layer before the output (0: none)
    batch_norm: bool = False  # BatchNorm after each convolution
    seed: int = 0  # random seed of PyTorch's default initialisation
    init_scale: float = 1.0  # every parameter of that initialisation times this (a sweep cell rerun alone)
    num_outputs: Optional[int] = None  # noqa: UP045  null: number of classes in the labels

    @staticmethod
    def validate(cfg: Any) -> None:
        m = model_section(cfg)
        _positive_list(m.channels, "model.channels")
        require(m.convs_per_stage >= 1, "model.convs_per_stage", "an integer >= 1", m.convs_per_stage)
        require(m.hidden >= 0, "model.hidden", "an integer >= 0 (0: no hidden fully connected layer)", m.hidden)
        _check_common(m)


@dataclass
class BalanceConfig:
    every_n_steps: int = 0  # per-unit balance C_j of ReLU / conv nets (balance/* tags); 0: off

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)


for _name, _schema in (("mlp", MLPConfig), ("cnn", CNNConfig), ("vgg", VGGConfig)):
    register_model(_name, _schema, f"extensions.real_models:build_{_name}", default_data=DEFAULT_DATA,
                   convergence="loss", loss=LOSS)
register_data("digits", DigitsConfig, "extensions.real_data:load_digits_data")
register_data("cifar10", Cifar10Config, "extensions.real_data:load_cifar10")
register_monitor("balance", BalanceConfig, "extensions.balance:build_monitor")
