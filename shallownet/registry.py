"""Models, data sets and losses by name: what a config's `model.kind`, `data.kind` and `loss` pick.

A model kind is a config schema for the `model:` section plus a builder; a data kind likewise for
`data:`. The shallow net is registered here; extensions register theirs in their own modules, which
pyproject.toml lists under the entry-point group `shallownet.plugins`. They are imported only when a
config names a kind this module does not know yet, so the core never imports extensions.

    @register_model("my_net", MyNetConfig, default_data="digits", convergence="loss")
    def build_my_net(cfg, data):            # cfg: the whole validated run config; data: FullBatchData
        return MyNet(...)                    # an nn.Module in data.x's dtype

A model may also say what it knows (DynamicsMonitor logs it under dynamics/<name>):

    def quantities(self) -> dict[str, torch.Tensor]    # 0-dim tensors -> scalars, 1-dim -> histograms

and `ratios = {"imbalance_ratio": "imbalance_per_unit"}` asks for a vector quantity's value relative to
its initial value (on the entry with the largest initial magnitude).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

PLUGIN_GROUP = "shallownet.plugins"
CONVERGENCE = ("residual", "loss", "grad_norm")


@dataclass(frozen=True)
class FullBatchData:
    """The whole training set (and an optional test set), as tensors. `target` is Phi where it exists."""

    x: Any
    y: Any
    x_test: Any = None
    y_test: Any = None
    target: float | None = None


@dataclass(frozen=True)
class ModelKind:
    name: str
    schema: type  # dataclass of the `model:` section, without `kind`
    build: Callable  # (cfg, data: FullBatchData) -> nn.Module
    default_data: str
    convergence: str  # what train.tol bounds by default: one of CONVERGENCE
    loss: str  # default loss name, a key of LOSSES


@dataclass(frozen=True)
class DataKind:
    name: str
    schema: type  # dataclass of the `data:` section, without `kind`
    load: Callable  # (cfg, dtype) -> FullBatchData


MODELS: dict[str, ModelKind] = {}
DATA: dict[str, DataKind] = {}
MONITORS: dict[str, Callable] = {}  # name -> factory(every_n_steps) of a Lightning callback


def register_model(name: str, schema: type, *, default_data: str, convergence: str = "loss",
                   loss: str = "half_mse") -> Callable:
    if convergence not in CONVERGENCE:
        raise ValueError(f"convergence must be one of {CONVERGENCE}, got {convergence!r}")

    def decorate(build: Callable) -> Callable:
        MODELS[name] = ModelKind(name, schema, build, default_data, convergence, loss)
        return build
    return decorate


def register_data(name: str, schema: type) -> Callable:
    def decorate(load: Callable) -> Callable:
        DATA[name] = DataKind(name, schema, load)
        return load
    return decorate


def register_monitor(name: str) -> Callable:
    """A monitor a config switches on by name (`monitor.<name>.every_n_steps`), e.g. the balance monitor."""
    def decorate(factory: Callable) -> Callable:
        MONITORS[name] = factory
        return factory
    return decorate


def monitor(name: str) -> Callable | None:
    return _lookup(MONITORS, name)


def _load_plugins() -> None:
    """Entry points of installed packages, and the modules named in $SHALLOWNET_PLUGINS (comma-separated;
    for a source tree on PYTHONPATH that is not pip-installed, or a quick experiment of your own)."""
    import importlib
    import os

    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()
    for name in filter(None, os.environ.get("SHALLOWNET_PLUGINS", "").split(",")):
        importlib.import_module(name.strip())


def _lookup(table: dict, name: str):
    if name not in table:
        import shallownet.builtin_kinds  # noqa: F401  (registers the shallow net)
    if name not in table:
        _load_plugins()
    return table.get(name)


def model_kind(name: str) -> ModelKind | None:
    return _lookup(MODELS, name)


def data_kind(name: str) -> DataKind | None:
    return _lookup(DATA, name)


def known_models() -> list[str]:
    _lookup(MODELS, "")
    return sorted(MODELS)


def known_data() -> list[str]:
    _lookup(DATA, "")
    return sorted(DATA)
