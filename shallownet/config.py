"""Loading and validating omegaconf configs: built-in defaults, then a YAML file, then `key=value` overrides.

Each command's schema is a dataclass in one place (its defaults are the built-in defaults; the files in
configs/ are examples that equal them). Sections marked `kind_section(...)` take their schema from the
registry entry their `kind` names (model.kind, data.kind), so one schema serves every model.

Every user mistake becomes a ConfigError with a one-line message that names the key or file and what
is allowed; the CLI turns it into exit status 2 before any work starts. Checks done here, before
omegaconf sees the input: YAML without anchors/aliases, duplicate keys or non-plain scalars; known keys
only; a value never where a section belongs or the reverse; exact types (no 2 for true, no [[1]] for a
list of numbers); integers within int64; finite floats; interpolations only as references to other keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DTYPES = ("float64", "float32")
INT64 = 2**63
MAX_CONFIG_BYTES = 1_000_000
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the key or file and what is allowed."""


def kind_section(table: str, default: str | None = None) -> Any:
    """A dataclass field whose schema comes from the registry entry its `kind` key names.

    table is "model" or "data"; default None means "the model kind's default data".
    """
    return field(default=None, metadata={"kinds": table, "default": default})


# --- the schema shared by the single-run commands ----------------------------------------------------

@dataclass
class OptimConfig:
    method: str = "gd"  # gd | flow
    lr: float = 0.1  # GD step size; for flow, the GD step its time axis is measured in
    rtol: float = 1.0e-10  # flow only: Dormand-Prince local error per coordinate <= atol + rtol |theta_i|
    atol: float = 1.0e-12


@dataclass
class TrainConfig:
    max_steps: int = 2000
    max_time: Optional[float] = None  # noqa: UP045 (omegaconf reads typing.Optional only); flow time budget
    tol: float = 1.0e-10
    convergence: Optional[str] = None  # noqa: UP045  residual | loss | grad_norm; null: the model's own
    divergence_norm: float = 1.0e12
    chunk_size: Optional[int] = None  # noqa: UP045  rows per gradient chunk; null: the whole batch at once
    device: str = "cpu"
    dtype: str = "float64"
    time_unit: Optional[float] = None  # noqa: UP045  x-axis step = round(time / time_unit); null: GD step k,
    # flow time in units of optim.lr
    checkpoint_every_n_steps: int = 0  # 0: only at the end (and on interruption)
    resume: Optional[str] = None  # noqa: UP045  a run folder to continue


@dataclass
class TrainerConfig:
    """Passed through to lightning.Trainer; the keys the run owns (max_steps, precision, logger, ...) are
    set from train.* and are not accepted here."""

    devices: Optional[int] = None  # noqa: UP045  number of devices (processes) for a distributed strategy
    num_nodes: int = 1
    strategy: str = "auto"
    deterministic: Optional[bool] = None  # noqa: UP045
    benchmark: Optional[bool] = None  # noqa: UP045
    detect_anomaly: bool = False


@dataclass
class SharpnessConfig:
    every_n_steps: int = 10
    tol: float = 1.0e-10
    max_iter: int = 1000
    top_k: int = 1


@dataclass
class PluginMonitorConfig:
    every_n_steps: int = 0  # 0: off


@dataclass
class MonitorConfig:
    every_n_steps: int = 1
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)
    balance: PluginMonitorConfig = field(default_factory=PluginMonitorConfig)  # extensions/balance.py
    deep_theory: PluginMonitorConfig = field(default_factory=PluginMonitorConfig)  # extensions/deep_monitor.py


@dataclass
class OutputConfig:
    root: str = "runs"
    name: str = "train"
    progress: bool = True


@dataclass
class RunConfig:
    model: Any = kind_section("model", default="scalar_linear")
    data: Any = kind_section("data")
    loss: Optional[str] = None  # noqa: UP045  a name in shallownet.losses.LOSSES; null: the model's own
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


PLUGIN_MONITORS = ("balance", "deep_theory")  # callbacks from extensions, by registry name
OWNED_TRAINER_KEYS = {
    "max_steps": "train.max_steps", "max_epochs": "train.max_steps", "precision": "train.dtype",
    "accelerator": "train.device", "logger": "the run folder", "callbacks": "monitor.*",
    "enable_checkpointing": "train.checkpoint_every_n_steps", "default_root_dir": "output.root",
}


# --- loading -----------------------------------------------------------------------------------------

def load_config(schema: type, path: str | Path | None, overrides: list[str]) -> DictConfig:
    """Merge schema defaults, the YAML file (if any) and `key=value` overrides; check names and types.

    A schema may set `kind_defaults = {model kind: {section: {key: value}}}`: its own defaults for the
    sections of that model kind (compare's imbalanced start), applied when that kind is chosen.
    """
    layers = ([read_yaml(Path(path))] if path is not None else []) + [parse_overrides(overrides)]
    for layer in layers:
        check_interpolations(layer, "")
    concrete = specialise(schema, layers)
    for layer in layers:
        check_against(concrete, layer, "")
    merged = OmegaConf.structured(concrete)
    model_kind = merged.get("model", {}).get("kind") if "model" in merged else None
    own = getattr(schema, "kind_defaults", {}).get(model_kind)
    if own:
        merged = OmegaConf.merge(merged, own)
    try:
        for layer in layers:
            merged = OmegaConf.merge(merged, layer)
        resolved = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from None
    except RecursionError:
        raise ConfigError("config: interpolations refer to each other in a loop") from None
    check_against(concrete, resolved, "")  # interpolated values are checked like literal ones
    final = OmegaConf.merge(OmegaConf.structured(concrete), resolved)
    OmegaConf.set_readonly(final, True)
    return final


class _StrictLoader(yaml.SafeLoader):
    """YAML with plain scalars only: no anchors or aliases (an alias bomb expands exponentially), no
    duplicate keys (the last one would win silently), no dates or other tagged values."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None) is not None:
            raise yaml.YAMLError("anchors and aliases (&, *) are not supported")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        if duplicates:
            raise yaml.YAMLError(f"duplicate key {duplicates[0]!r}")
        return super().construct_mapping(node, deep)


_StrictLoader.yaml_implicit_resolvers = {  # no dates
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# 1e-3 and 1.0e12 are floats, as on the command line (YAML 1.1 alone would read them as strings)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"),
    list("-+0123456789"))


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path}: no such file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes, not a config")
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (strict safe loader)
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: cannot be read (not UTF-8 text)") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        detail = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML{line} ({detail})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a mapping of keys, not a {type(data).__name__}")
    _check_plain(data, f"config file {path}", "")
    return data


def _check_plain(node: Any, where: str, key: str) -> None:
    if isinstance(node, dict):
        for k, value in node.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} under '{key}' is not a name")
            _check_plain(value, where, f"{key}.{k}" if key else k)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_plain(item, where, f"{key}[{i}]")
    elif node is not None and not isinstance(node, (str, int, float, bool)):
        raise ConfigError(f"{where}: '{key}' holds a {type(node).__name__}; only numbers, strings, booleans, "
                          "null, lists and mappings are allowed")


def parse_overrides(overrides: list[str]) -> dict:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key name")
    try:
        data = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)
    except RecursionError:
        raise ConfigError("overrides: nested too deeply") from None
    except Exception as err:  # omegaconf's grammar and YAML errors: report the offending item
        bad = next((item for item in overrides if not _parses(item)), overrides[-1] if overrides else "")
        raise ConfigError(f"override {bad!r} cannot be parsed ({str(err).splitlines()[0]})") from None
    _check_plain(data, "overrides", "")
    return data


def _parses(item: str) -> bool:
    try:
        OmegaConf.from_dotlist([item])
        return True
    except Exception:
        return False


def check_interpolations(node: Any, key: str) -> None:
    """Only ${other.key} references: resolvers such as ${oc.env:VAR} would copy the environment (secrets
    included) into the folder name, config.yaml and the event files."""
    if isinstance(node, dict):
        for k, value in node.items():
            check_interpolations(value, f"{key}.{k}" if key else k)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            check_interpolations(item, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        if _REFERENCE.sub("", node).count("${") or ":" in "".join(_REFERENCE.findall(node)):
            raise ConfigError(f"config key '{key}': only references to other keys, like ${{model.width}}, "
                              f"are allowed in ${{...}}, got {node!r}")


# --- schemas with kind sections ----------------------------------------------------------------------

def specialise(schema: type, layers: list[dict]) -> type:
    """The schema with each kind section replaced by the dataclass of the kind the layers choose."""
    from shallownet import registry

    chosen: dict[str, str] = {}
    replaced = []
    for f in dataclasses.fields(schema):
        table = f.metadata.get("kinds")
        if table is None:
            continue
        kind = _chosen(layers, f.name)
        if kind is None:
            kind = f.metadata["default"] or registry.model_kind(chosen["model"]).default_data
        lookup, known = ((registry.model_kind, registry.known_models) if table == "model"
                         else (registry.data_kind, registry.known_data))
        entry = lookup(kind) if isinstance(kind, str) else None
        if entry is None:
            raise ConfigError(f"config key '{f.name}.kind' must be one of {', '.join(known())}, got {kind!r}")
        chosen[table] = kind
        section = dataclasses.make_dataclass(
            f"{table.capitalize()}Section", [("kind", str, field(default=kind))], bases=(entry.schema,))
        replaced.append((f.name, section, field(default_factory=section)))
    if not replaced:
        return schema
    return dataclasses.make_dataclass(schema.__name__, replaced, bases=(schema,))


def _chosen(layers: list[dict], section: str) -> Any:
    kind = None
    for layer in layers:
        value = layer.get(section)
        if isinstance(value, dict) and "kind" in value:
            kind = value["kind"]
    return kind


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)  # resolves string annotations (from __future__ import annotations)


def check_against(schema: type, data: Any, prefix: str) -> None:
    """Unknown keys name the allowed ones; values and sections in their places; exact types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix[:-1]}' is a section, not a value (got {data!r})")
    hints = _hints(schema)
    fields = [f.name for f in dataclasses.fields(schema)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            where = f" under '{prefix[:-1]}'" if prefix else ""
            owner = OWNED_TRAINER_KEYS.get(key) if prefix == "trainer." else None
            if owner is not None:
                raise ConfigError(f"config key '{full}' is set by {owner}; not accepted under 'trainer'")
            raise ConfigError(f"unknown config key '{full}'; allowed{where}: {', '.join(fields)}")
        _check_value(hints[key], value, full)


def _check_value(expected: Any, value: Any, key: str) -> None:
    if isinstance(value, str) and _REFERENCE.fullmatch(value):
        return  # an interpolation: checked once resolved
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return
        expected = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(expected), typing.get_args(expected)
    if dataclasses.is_dataclass(expected):
        check_against(expected, value, f"{key}.")
        return
    if isinstance(value, dict):
        raise ConfigError(f"config key '{key}' is a value, not a section (got {value!r})")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        for i, item in enumerate(value):
            _check_value(args[0], item, f"{key}[{i}]")
        return
    if expected is Any:
        return
    if value is None:
        raise ConfigError(f"config key '{key}' must be set (null is not allowed here)")
    if isinstance(value, list):
        raise ConfigError(f"config key '{key}' must be a single {_type_name(expected)}, not a list")
    _check_scalar(expected, value, key)


def _check_scalar(expected: type, value: Any, key: str) -> None:
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -INT64 <= value < INT64:
            raise ConfigError(f"config key '{key}' must be an integer within 64 bits, got {value}")
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(float(value)):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
        if ok and isinstance(value, int) and not -INT64 <= value < INT64:
            raise ConfigError(f"config key '{key}' is out of range, got {value}")
    elif expected is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"config key '{key}' must be {_type_name(expected)}, got {value!r}")


def _type_name(expected: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(expected,
                                                                                               str(expected))


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    return f"config key '{key}': {message}" if key else f"config: {message}"


# --- range checks ------------------------------------------------------------------------------------

def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise a ConfigError naming `key` and what it allows unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


def require_device(device: str, key: str) -> None:
    """`device` is 'cpu', or 'cuda[:N]' with that GPU present on this machine."""
    require(device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device) is not None, key, "cpu or cuda[:N]", device)
    if device == "cpu":
        return
    import torch

    index = device.partition(":")[2]
    present = torch.cuda.is_available() and (index == "" or int(index) < torch.cuda.device_count())
    require(present, key, "cpu or a CUDA device present on this machine", device)


def require_memory(n_bytes: float, what: str, key: str) -> None:
    """Refuse before allocating what cannot fit in this machine's memory."""
    available = physical_memory()
    if n_bytes > available:
        raise ConfigError(f"config key '{key}': {what} needs {n_bytes / 2**30:.3g} GiB, more than this machine's "
                          f"{available / 2**30:.3g} GiB")


def physical_memory() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def validate_run(cfg: DictConfig) -> None:
    """Range checks of a RunConfig (types were checked on load); the model and data kinds check their
    own sections through their `validate` hooks where they have one."""
    from shallownet import registry
    from shallownet.losses import LOSSES

    for entry in (registry.model_kind(cfg.model.kind), registry.data_kind(cfg.data.kind)):
        check = getattr(entry.schema, "validate", None)
        if check is not None:
            check(cfg)
    require(cfg.loss is None or cfg.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)} or null", cfg.loss)
    o = cfg.optim
    require(o.method in ("gd", "flow"), "optim.method", "gd or flow", o.method)
    require(o.lr > 0, "optim.lr", "> 0", o.lr)
    require(o.rtol > 0, "optim.rtol", "> 0", o.rtol)
    require(o.atol > 0, "optim.atol", "> 0", o.atol)
    t = cfg.train
    require(t.max_steps >= 1, "train.max_steps", "an integer >= 1", t.max_steps)
    require(t.max_time is None or t.max_time > 0, "train.max_time", "> 0 or null", t.max_time)
    unit = t.time_unit or o.lr  # TensorBoard steps count in this unit: they must fit in int64
    if o.method == "flow" and t.max_time is not None:
        require(t.max_time / unit < INT64, "train.max_time", f"< 2^63 x-axis units of {unit:g}", t.max_time)
    if t.time_unit is not None:
        require(t.max_steps * o.lr / unit < INT64, "train.time_unit", "large enough that the x-axis fits 64 bits",
                t.time_unit)
    require(t.time_unit is None or t.time_unit > 0, "train.time_unit", "> 0 or null", t.time_unit)
    require(t.tol > 0, "train.tol", "> 0", t.tol)
    from shallownet.registry import CONVERGENCE

    require(t.convergence is None or t.convergence in CONVERGENCE, "train.convergence",
            f"one of {', '.join(CONVERGENCE)} or null", t.convergence)
    require(t.divergence_norm > 0, "train.divergence_norm", "> 0", t.divergence_norm)
    require(t.chunk_size is None or t.chunk_size >= 1, "train.chunk_size", "an integer >= 1 or null", t.chunk_size)
    require(t.dtype in DTYPES, "train.dtype", f"one of {', '.join(DTYPES)}", t.dtype)
    require(t.checkpoint_every_n_steps >= 0, "train.checkpoint_every_n_steps", "an integer >= 0",
            t.checkpoint_every_n_steps)
    require_device(t.device, "train.device")
    tr = cfg.trainer
    require(tr.devices is None or tr.devices >= 1, "trainer.devices", "an integer >= 1 or null", tr.devices)
    require(tr.num_nodes >= 1, "trainer.num_nodes", "an integer >= 1", tr.num_nodes)
    require(tr.devices is None or ":" not in t.device, "trainer.devices",
            "null when train.device names one GPU (cuda:N)", tr.devices)
    mon = cfg.monitor
    require(mon.every_n_steps >= 1, "monitor.every_n_steps", "an integer >= 1", mon.every_n_steps)
    s = mon.sharpness
    require(s.every_n_steps >= 0, "monitor.sharpness.every_n_steps",
            "an integer >= 0 (0 turns the sharpness monitor off)", s.every_n_steps)
    require(s.tol > 0, "monitor.sharpness.tol", "> 0", s.tol)
    require(s.max_iter >= 1, "monitor.sharpness.max_iter", "an integer >= 1", s.max_iter)
    require(s.top_k >= 1, "monitor.sharpness.top_k", "an integer >= 1", s.top_k)
    for name in PLUGIN_MONITORS:
        every = mon[name].every_n_steps
        require(every >= 0, f"monitor.{name}.every_n_steps", "an integer >= 0 (0: off)", every)
