"""Everything a config picks by name: models, data sets, processes (optimisers and flows) and monitors.

A kind is a config schema (a dataclass) plus a builder, given as a function or as "module:function", which
is imported only when a run is built:

    @register_model("my_net", MyNetConfig, default_data="digits", convergence="loss")
    def build_my_net(cfg, data):            # cfg: the whole validated run config; data: FullBatchData
        from my_package.nets import MyNet   # heavy imports inside the builder
        return MyNet(...)                    # an nn.Module in data.x's dtype

    register_model("my_net", MyNetConfig, build="my_package.nets:build_my_net", default_data="digits")
    register_data("my_data", MyDataConfig, build=...)       # load(cfg, dtype) -> FullBatchData
    register_process("my_opt", MyOptConfig, build=...)      # build(section) -> shallownet.processes.base.Process
    register_monitor("my_monitor", MyMonitorConfig, build=...)  # build(cfg, section) -> PeriodicMonitor or None (off)

Range checks: a schema's `validate` staticmethod, called with the whole run config for models and data,
and with (section, key) for processes and monitors (key: where the section sits, e.g. "optim",
"processes[2]", "monitor.sharpness").

Registration modules stay light (no torch or Lightning at import time): the config is loaded, checked and
refused before any heavy import. The built-in kinds live in BUILTIN; extensions register theirs in modules
that pyproject.toml lists under the entry-point group `shallownet.plugins` (or that $SHALLOWNET_PLUGINS
names, comma-separated, for a source tree that is not pip-installed). All are imported at the first lookup;
this module imports none of them by name at its top, so the kinds depend on the registry and never the
reverse.

A model may also say what it knows (DynamicsMonitor logs it under dynamics/<name>):

    def quantities(self) -> dict[str, torch.Tensor]    # 0-dim tensors -> scalars, 1-dim -> histograms

and `ratios = {"imbalance_ratio": "imbalance_per_unit"}` asks for a vector quantity's value relative to
its initial value (on the entry with the largest initial magnitude).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

PLUGIN_GROUP = "shallownet.plugins"
BUILTIN = ("shallownet.builtin_kinds", "shallownet.processes", "shallownet.monitors")
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
class Kind:
    """One registered name: its schema (the config section without the key that chose it) and builder."""

    name: str
    schema: type
    target: Callable | str  # the builder, or "module:function" naming it

    @property
    def build(self) -> Callable:
        if callable(self.target):
            return self.target
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class ModelKind(Kind):
    default_data: str = "points"
    convergence: str = "loss"  # what train.tol bounds by default: one of CONVERGENCE
    loss: str = "half_mse"  # default loss name, a key of shallownet.losses.LOSSES


TABLES: dict[str, dict[str, Kind]] = {"model": {}, "data": {}, "process": {}, "monitor": {}}


def _register(table: str, kind: Callable, name: str, schema: type, build: Callable | str | None,
              **options) -> Callable | None:
    """Register now when `build` is given; else return a decorator that registers the function it decorates."""
    def decorate(target: Callable | str) -> Callable | str:
        TABLES[table][name] = kind(name, schema, target, **options)
        return target
    return decorate if build is None else decorate(build)


def register_model(name: str, schema: type, build: Callable | str | None = None, *, default_data: str,
                   convergence: str = "loss", loss: str = "half_mse"):
    """convergence: what train.tol bounds by default (one of CONVERGENCE); loss: the default loss name."""
    if convergence not in CONVERGENCE:
        raise ValueError(f"convergence must be one of {CONVERGENCE}, got {convergence!r}")
    return _register("model", ModelKind, name, schema, build, default_data=default_data, convergence=convergence,
                     loss=loss)


def register_data(name: str, schema: type, build: Callable | str | None = None):
    return _register("data", Kind, name, schema, build)


def register_process(name: str, schema: type, build: Callable | str | None = None):
    """An optimiser or flow, chosen by `optim.method` (compare and eos: each entry of `processes`)."""
    return _register("process", Kind, name, schema, build)


def register_monitor(name: str, schema: type, build: Callable | str | None = None):
    """A monitor with the config section `monitor.<name>` (every registered monitor has one)."""
    return _register("monitor", Kind, name, schema, build)


_loaded = False


def _load_all() -> None:
    """The built-in kinds, then the plugins' (entry points and $SHALLOWNET_PLUGINS), once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN:
        importlib.import_module(module)
    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()
    for module in filter(None, os.environ.get("SHALLOWNET_PLUGINS", "").split(",")):
        importlib.import_module(module.strip())


def lookup(table: str, name: str) -> Kind | None:
    _load_all()
    return TABLES[table].get(name) if isinstance(name, str) else None


def known(table: str) -> list[str]:
    _load_all()
    return sorted(TABLES[table])


def model_kind(name: str) -> Kind | None:
    return lookup("model", name)


def data_kind(name: str) -> Kind | None:
    return lookup("data", name)


def process_kind(name: str) -> Kind | None:
    return lookup("process", name)


def owners(table: str, key: str) -> list[str]:
    """The kinds of `table` whose schema has the field `key` (for "belongs to ..." hints)."""
    import dataclasses

    _load_all()
    return sorted(name for name, kind in TABLES[table].items()
                  if any(f.name == key for f in dataclasses.fields(kind.schema)))
