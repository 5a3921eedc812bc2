"""Image classification data for the real networks: scikit-learn's digits (embedded) and CIFAR-10 (local).

Both follow the edge-of-stability protocol of theory.md 8.5 (Cohen et al. 2021): the first `n_train`
training examples, every feature (pixel x channel) centred and divided by its standard deviation, both
statistics taken over that training subset (population std, ddof 0, as numpy's in their code; a constant
feature is only centred) and applied unchanged to the test split. Images stay [N, C, H, W] (digits:
[N, 1, 8, 8], CIFAR-10: [N, 3, 32, 32]); a fully connected model flattens them itself (its first layer is
an nn.Flatten), so one data set serves MLPs and CNNs alike. Targets are int64 class labels; the loss
decides what to do with them (half_sum_mse one-hots them, cross_entropy takes them as they are).

Data kinds (`data.kind`):

    digits    1797 8x8 grey images, 10 classes, shipped inside scikit-learn (no download). The last
              `n_test` images are the test split; the training examples are the first `n_train` of the rest.
    cifar10   CIFAR-10 in its python pickle format, read from the folder `data.root` (the extracted
              cifar-10-python.tar.gz: data_batch_1..5, test_batch, batches.meta). Never downloaded, no
              torchvision: the batches are read with a restricted unpickler (see _BatchUnpickler).

Every problem with the files is a ConfigError naming the file and what was expected.
"""

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extensions.real_kinds import (
    CIFAR_CLASSES,
    CIFAR_FORMAT,
    CIFAR_META_FILE,
    CIFAR_SHAPE,
    CIFAR_TEST_FILE,
    CIFAR_TRAIN_FILES,
    DIGITS_TOTAL,
    Cifar10Config,
    DigitsConfig,
    data_section,
)
from shallownet.checks import ConfigError, require
from shallownet.registry import FullBatchData

# --- the protocol -----------------------------------------------------------------------------------

def standardize(x_train: torch.Tensor, x_test: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-feature centring and standardising with the training subset's statistics (population std).

    Works on any [N, ...] layout: a feature is one entry of the trailing dimensions. Computed in float64.
    """
    train = x_train.to(torch.float64)
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    test = None if x_test is None else (x_test.to(torch.float64) - mean) / std
    return (train - mean) / std, test


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"config key 'train.dtype' must be a floating torch dtype such as float64, got {dtype!r}")
    return value


def _full_batch(x_train, y_train, x_test, y_test, dtype: torch.dtype) -> FullBatchData:
    x, x_t = standardize(x_train, x_test)
    return FullBatchData(x=x.to(dtype).contiguous(), y=y_train.to(torch.int64).contiguous(),
                         x_test=None if x_t is None else x_t.to(dtype).contiguous(),
                         y_test=None if y_test is None else y_test.to(torch.int64).contiguous())


# --- digits -----------------------------------------------------------------------------------------

def load_digits_data(cfg: Any, dtype: Any = torch.float64) -> FullBatchData:
    """scikit-learn's digits as [N, 1, 8, 8]: train = the first n_train of the first 1797 - n_test images."""
    DigitsConfig.validate(cfg)
    section = data_section(cfg)
    n_test = section.n_test
    available = DIGITS_TOTAL - n_test
    n_train = available if section.n_train is None else section.n_train
    from sklearn.datasets import load_digits  # optional dependency (dev extra): validate() checked it is there

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float64).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    test = slice(available, DIGITS_TOTAL)
    return _full_batch(images[:n_train], labels[:n_train], images[test] if n_test else None,
                       labels[test] if n_test else None, _dtype(dtype))


# --- CIFAR-10 ---------------------------------------------------------------------------------------

def _numpy_global(module_tail: str, name: str) -> Any:
    """numpy's own reconstructor, whichever of numpy._core (numpy 2) / numpy.core (numpy 1) holds it."""
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module_tail}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module_tail}.{name}")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else.

    A CIFAR batch is a dict of bytes / lists / ints and numpy arrays. Plain containers need no global at
    all; the only globals a numpy array's pickle names are the array reconstructors below (ndarray,
    dtype, _reconstruct, scalar, _frombuffer) and, in protocol 2 written by Python 3, _codecs.encode
    for its raw bytes. None of them runs code or touches anything outside the array being built, so a
    file cannot make this loader do anything but build arrays; any other global is refused.
    """

    _NUMPY = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            import _codecs

            return _codecs.encode
        for prefix in ("numpy._core.", "numpy.core."):
            tail = module.removeprefix(prefix)
            if module.startswith(prefix) and (tail, name) in self._NUMPY:
                return _numpy_global(tail, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")


def _malformed(path: Path, why: str, expected: str) -> ConfigError:
    return ConfigError(f"CIFAR-10 file {path} is malformed ({why}); expected {expected}")


def _read_pickle(path: Path, expected: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"CIFAR-10 file {path} is missing; data.root must hold {CIFAR_FORMAT}")
    try:
        with path.open("rb") as handle:
            content = _BatchUnpickler(handle, encoding="bytes").load()
    except MemoryError:
        raise
    except Exception as err:  # any failure to decode is a malformed file, never a traceback
        why = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise _malformed(path, why, expected) from None
    if not isinstance(content, dict):
        raise _malformed(path, f"a pickled {type(content).__name__}, not a dict", expected)
    return content


def _entry(content: dict, key: str) -> Any:
    """content[b'key'] (Python 2 pickles, read as bytes) or content['key'] (written by Python 3)."""
    return content.get(key.encode(), content.get(key))


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 [n, 3072], labels int64 [n]) of one CIFAR-10 batch file, checked."""
    expected = "a pickled dict with b'data' (uint8 array [N, 3072]) and b'labels' (N integers in 0..9)"
    content = _read_pickle(path, expected)
    data, labels = _entry(content, "data"), _entry(content, "labels")
    if data is None or labels is None:
        raise _malformed(path, "no b'data' or no b'labels' entry", expected)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise _malformed(path, f"b'data' is a {what}", expected)
    try:
        labels = np.asarray(labels)
    except Exception:  # an unconvertible object: reported below
        labels = np.asarray(None)
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise _malformed(path, f"b'labels' is not {data.shape[0]} integers", expected)
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR_CLASSES):
        raise _malformed(path, f"a label outside 0..9 ({int(labels.min())}..{int(labels.max())})", expected)
    return data, labels.astype(np.int64)


def _check_meta(path: Path) -> None:
    expected = "a pickled dict with b'label_names' (10 class names)"
    names = _entry(_read_pickle(path, expected), "label_names")
    if not isinstance(names, list | tuple) or len(names) != CIFAR_CLASSES:
        raise _malformed(path, "b'label_names' is not a list of 10 names", expected)


def _take(paths: list[Path], n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first n examples of the batch files in order, as ([n, 3, 32, 32] uint8, [n] int64); reads only
    the files it needs. Also returns how many examples the files read held in all."""
    images, labels, have = [], [], 0
    for path in paths:
        if have >= n:
            break
        data, target = _read_batch(path)
        images.append(data[: n - have])
        labels.append(target[: n - have])
        have += min(len(data), n - have)
    x = torch.from_numpy(np.concatenate(images)).reshape(-1, *CIFAR_SHAPE) if images else None
    y = torch.from_numpy(np.concatenate(labels)) if labels else None
    return x, y, have


def load_cifar10(cfg: Any, dtype: Any = torch.float64) -> FullBatchData:
    """CIFAR-10 from data.root: the first n_train training images, the first n_test test images."""
    Cifar10Config.validate(cfg)
    section = data_section(cfg)
    folder = Path(str(section.root)).expanduser()
    _check_meta(folder / CIFAR_META_FILE)
    train_paths = [folder / name for name in CIFAR_TRAIN_FILES]
    x, y, have = _take(train_paths, section.n_train)
    require(have == section.n_train, "data.n_train",
             f"at most the {have} training examples in {folder}/data_batch_1..5", section.n_train)
    x_test = y_test = None
    if section.n_test:
        x_test, y_test, have = _take([folder / CIFAR_TEST_FILE], section.n_test)
        require(have == section.n_test, "data.n_test",
                 f"at most the {have} examples in {folder / CIFAR_TEST_FILE}", section.n_test)
    return _full_batch(x, y, x_test, y_test, _dtype(dtype))
