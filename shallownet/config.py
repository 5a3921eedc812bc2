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

from shallownet.checks import ConfigError, physical_memory, require, require_device, require_memory  # noqa: F401
from shallownet.losses import LOSSES
from shallownet.registry import CONVERGENCE

DTYPES = ("float64", "float32")
INT64 = 2**63
MAX_CONFIG_BYTES = 1_000_000
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def kind_section(table: str, default: str | None = None, key: str = "kind") -> Any:
    """A dataclass field whose schema comes from the registry entry its `key` names (model.kind, data.kind,
    optim.method). table is a registry table: "model", "data" or "process"; default None means "the
    model kind's default data"."""
    return field(default=None, metadata={"kinds": table, "default": default, "key": key})


def kind_list(table: str, default: list[dict], key: str) -> Any:
    """A list field whose every entry is a section of its own kind (compare's `processes`: each entry's
    `method` picks its schema)."""
    return field(default_factory=lambda: [dict(entry) for entry in default],
                 metadata={"kind_list": table, "key": key})


def monitor_section() -> Any:
    """The `monitor:` section: one sub-section per registered monitor, `monitor.<name>`."""
    return field(default=None, metadata={"monitors": True})


# --- the schema shared by the single-run commands ----------------------------------------------------

@dataclass
class TrainConfig:
    max_steps: int = 2000  # at most this many steps
    max_time: Optional[float] = None  # noqa: UP045 (omegaconf reads typing.Optional only); process-time budget
    tol: float = 1.0e-10  # converged once the train.convergence quantity is <= tol (> 0)
    convergence: Optional[str] = None  # noqa: UP045  what train.tol bounds; null: the model's own
    divergence_norm: float = 1.0e12  # diverged once the squared parameter norm exceeds this (or is not finite)
    chunk_size: Optional[int] = None  # noqa: UP045  rows per gradient chunk; null: the whole batch at once
    device: str = "cpu"  # cpu or cuda[:N]
    dtype: str = "float64"  # the parameters' and data's dtype
    time_unit: Optional[float] = None  # noqa: UP045  x-axis step = round(process time / time_unit); null: the
    # process's step count
    checkpoint_every_n_steps: int = 0  # 0: only at the end (and on interruption)
    resume: Optional[str] = None  # noqa: UP045  a run folder to continue

    choices = {"convergence": CONVERGENCE, "dtype": DTYPES}  # checked on load, listed by --help


@dataclass
class TrainerConfig:
    """Passed through to lightning.Trainer; the keys the run owns (max_steps, precision, logger, ...) are
    set from train.* and are not accepted here."""

    devices: Optional[int] = None  # noqa: UP045  number of devices (processes) for a distributed strategy
    num_nodes: int = 1  # machines for a distributed strategy
    strategy: str = "auto"  # lightning.Trainer's strategy: auto, ddp, ...
    deterministic: Optional[bool] = None  # noqa: UP045  lightning.Trainer's deterministic (null: its default)
    benchmark: Optional[bool] = None  # noqa: UP045  lightning.Trainer's benchmark, cudnn autotuning (null: its default)
    detect_anomaly: bool = False  # torch.autograd's anomaly detection (slow; finds where a NaN appears)


@dataclass
class OutputConfig:
    root: str = "runs"  # the run folder is <root>/<name>/version_<n>
    name: str = "train"  # the run folder's parent under root
    progress: bool = True  # show a progress bar


@dataclass
class RunConfig:
    model: Any = kind_section("model", default="scalar_linear")  # the model: a registered model kind; its keys follow
    data: Any = kind_section("data")  # the data set: a registered data kind (null: the model kind's default); its keys
    # follow
    loss: Optional[str] = None  # noqa: UP045  a name in shallownet.losses.LOSSES; null: the model's own
    optim: Any = kind_section("process", default="gd", key="method")  # the process: an optimiser or a flow, by name;
    # its keys follow
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: Any = monitor_section()
    output: OutputConfig = field(default_factory=OutputConfig)

    choices = {"loss": tuple(LOSSES)}
    renamed = {"monitor.every_n_steps": "monitor.dynamics.every_n_steps"}  # old key -> what replaced it


OWNED_TRAINER_KEYS = {
    "max_steps": "train.max_steps", "max_epochs": "train.max_steps", "precision": "train.dtype",
    "accelerator": "train.device", "logger": "the run folder", "callbacks": "monitor.*",
    "enable_checkpointing": "train.checkpoint_every_n_steps", "default_root_dir": "output.root",
}


# --- loading -----------------------------------------------------------------------------------------

def load_config(schema: type, path: str | Path | None, overrides: list[str]) -> DictConfig:
    """Merge schema defaults, the YAML file (if any) and `key=value` overrides; check names and types.

    A schema may set, as class attributes: `section_defaults` ({section: {key: value}}, its own defaults
    for sections whose schema lives elsewhere, e.g. eos's monitor cadences), `kind_defaults` ({model kind:
    {section: {key: value}}}, applied when that kind is chosen: compare's imbalanced start) and `renamed`
    ({old dotted key: its new name}: an old name is refused with a hint naming the new one).
    """
    layers = ([read_yaml(Path(path))] if path is not None else []) + [parse_overrides(overrides)]
    for layer in layers:
        check_interpolations(layer, "")
        _check_renamed(getattr(schema, "renamed", {}), layer)
    concrete = specialise(schema, layers)
    for layer in layers:
        check_against(concrete, layer, "")
    merged = OmegaConf.structured(concrete)
    model_kind = merged.get("model", {}).get("kind") if "model" in merged else None
    for own in (getattr(schema, "section_defaults", None), getattr(schema, "kind_defaults", {}).get(model_kind)):
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
    for f in dataclasses.fields(concrete):
        if "kind_list" in f.metadata:  # each entry typed by its own kind's schema
            sections = [OmegaConf.structured(_kind_class(f.metadata["kind_list"], f.metadata["key"], entry))
                        for entry in resolved[f.name]]
            final[f.name] = [OmegaConf.merge(section, entry) for section, entry in zip(sections, resolved[f.name],
                                                                                   strict=True)]
    OmegaConf.set_readonly(final, True)
    return final


def _check_renamed(renamed: dict[str, str], layer: dict) -> None:
    for key in _dotted_keys(layer, ""):
        for old, new in renamed.items():
            if key == old or key.startswith(old + "."):
                raise ConfigError(f"config key '{old}' is now {new}")


def _dotted_keys(node: Any, prefix: str) -> list[str]:
    if not isinstance(node, dict):
        return [prefix[:-1]] if prefix else []
    keys = [prefix[:-1]] if prefix else []
    for key, value in node.items():
        keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


class _StrictLoader(yaml.SafeLoader):
    """YAML with plain scalars only: no anchors or aliases (an alias bomb expands exponentially), no
    duplicate keys (the last one would win silently), no tagged values; an unquoted date stays its text."""

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
    _check_flow_mappings(data, "")
    return data


def _check_flow_mappings(node: Any, key: str) -> None:
    """{method:gd} is YAML for the key 'method:gd' with no value: say that a colon needs a space after it."""
    if isinstance(node, dict):
        for k, value in node.items():
            if ":" in k and value is None:
                name, _, given = k.partition(":")
                raise ConfigError(f"override '{key or k}': {{{k}}} reads as the key {k!r} without a value; write "
                                  f"{{{name}: {given}}} (a space after each colon)")
            _check_flow_mappings(value, f"{key}.{k}" if key else k)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_flow_mappings(item, f"{key}[{i}]")


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
    """The schema with each kind section replaced by the dataclass of the kind the layers choose, and the
    monitor section by one sub-section per registered monitor."""
    from shallownet import registry

    chosen: dict[str, str] = {}
    replaced = []
    for f in dataclasses.fields(schema):
        if f.metadata.get("monitors"):
            section = dataclasses.make_dataclass("MonitorSection", [
                (name, kind.schema, field(default_factory=kind.schema))
                for name, kind in _table("monitor").items()])
            replaced.append((f.name, section, field(default_factory=section)))
            continue
        table = f.metadata.get("kinds")
        if table is None:
            continue
        key = f.metadata["key"]
        name = _chosen(layers, f.name, key)
        if name is None:
            name = f.metadata["default"] or registry.model_kind(chosen["model"]).default_data
        section = _kind_class(table, key, {key: name}, f.name)
        chosen[table] = name
        replaced.append((f.name, section, field(default_factory=section)))
    if not replaced:
        return schema
    return dataclasses.make_dataclass(schema.__name__, replaced, bases=(schema,))


def _table(table: str) -> dict:
    from shallownet import registry

    registry.known(table)  # loads every registration module
    return registry.TABLES[table]


KIND_WORDS = {"model": "model kinds", "data": "data kinds", "process": "methods", "monitor": "monitors"}


def _kind_class(table: str, key: str, entry: Any, where: str = "") -> type:
    """The dataclass of the kind that entry[key] names, with `key` as a field (ConfigError if unknown)."""
    from shallownet import registry

    where = where or "entry"
    if not isinstance(entry, dict) or key not in entry:
        raise ConfigError(f"config key '{where}' must be a section with a '{key}': one of "
                          f"{', '.join(registry.known(table))}")
    name = entry[key]
    kind = registry.lookup(table, name)
    if kind is None:
        raise ConfigError(f"config key '{where}.{key}' must be one of {', '.join(registry.known(table))}"
                          f"{_did_you_mean(name, registry.known(table))}, got {name!r}")
    hints = _hints(kind.schema)
    own = [(f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory))
           for f in dataclasses.fields(kind.schema)]
    # the choosing key first, so config.yaml reads "kind: mlp" (or "method: adam") at the top of its section
    return dataclasses.make_dataclass(f"{table.capitalize()}Section", [(key, str, field(default=name)), *own],
                                      namespace={"kind_table": table, "kind_key": key,
                                                 "choices": getattr(kind.schema, "choices", {})})


def _did_you_mean(word: Any, candidates: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(word), candidates, n=1) if isinstance(word, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _chosen(layers: list[dict], section: str, key: str) -> Any:
    name = None
    for layer in layers:
        value = layer.get(section)
        if isinstance(value, dict) and key in value:
            name = value[key]
    return name


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)  # resolves string annotations (from __future__ import annotations)


def check_against(schema: type, data: Any, prefix: str) -> None:
    """Unknown keys name the allowed ones; values and sections in their places; exact types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix[:-1]}' is a section, not a value (got {data!r})")
    hints = _hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(_unknown(schema, key, full, prefix, list(fields)))
        table = fields[key].metadata.get("kind_list")
        if table is not None and not (isinstance(value, str) and _REFERENCE.fullmatch(value)):
            if not isinstance(value, list) or not value:
                raise ConfigError(f"config key '{full}' must be a non-empty list of sections, got {value!r}")
            for i, entry in enumerate(value):
                where = f"{full}[{i}]"
                check_against(_kind_class(table, fields[key].metadata["key"], entry, where), entry, where + ".")
            continue
        _check_value(hints[key], value, full)
        _check_choice(getattr(schema, "choices", {}).get(key), value, full)


def _check_choice(choices: tuple | None, value: Any, key: str) -> None:
    """A schema's `choices` ({field: allowed values}): refused on load with a close match, listed by --help
    (the schemas' validate hooks check them again, for sections built in code)."""
    if choices is None or value is None or (isinstance(value, str) and _REFERENCE.fullmatch(value)):
        return
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}{_did_you_mean(value, choices)}, "
                          f"got {value!r}")


def _unknown(schema: type, key: str, full: str, prefix: str, fields: list[str]) -> str:
    """The message for an unknown key: the allowed ones, a close match, and the kinds that do have it."""
    from shallownet import registry

    owner = OWNED_TRAINER_KEYS.get(key) if prefix == "trainer." else None
    if owner is not None:
        return f"config key '{full}' is set by {owner}; not accepted under 'trainer'"
    where = f" under '{prefix[:-1]}'" if prefix else ""
    message = f"unknown config key '{full}'{_did_you_mean(key, fields)}; allowed{where}: {', '.join(fields)}"
    table = getattr(schema, "kind_table", None)
    if table is not None:
        owners = registry.owners(table, key)
        if owners:
            message += f"; '{key}' belongs to the {KIND_WORDS[table]} {', '.join(owners)}"
    return message


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
        raise ConfigError(f"config key '{key}' must be {_type_name(expected)}, not a list")
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

def validate_run(cfg: DictConfig) -> None:
    """Range checks of a RunConfig (types were checked on load); the kinds check their own sections through
    their schemas' `validate` hooks where they have one."""
    from shallownet import registry

    for kind in (registry.model_kind(cfg.model.kind), registry.data_kind(cfg.data.kind)):
        check = getattr(kind.schema, "validate", None)
        if check is not None:
            check(cfg)
    require(cfg.loss is None or cfg.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)} or null", cfg.loss)
    process = validate_process(cfg.optim, "optim")
    validate_monitors(cfg.monitor)
    t = cfg.train
    require(t.max_steps >= 1, "train.max_steps", "an integer >= 1", t.max_steps)
    require(t.max_time is None or t.max_time > 0, "train.max_time", "> 0 or null", t.max_time)
    require(t.time_unit is None or t.time_unit > 0, "train.time_unit", "> 0 or null", t.time_unit)
    if t.time_unit is not None:  # TensorBoard steps count in this unit: they must fit in int64
        longest = process.time(t.max_steps) if process.time_per_step() is not None else t.max_time
        if longest is not None:
            require(longest / t.time_unit < INT64, "train.time_unit",
                    "large enough that the x-axis (process time / time_unit) fits 64 bits", t.time_unit)
    require(t.tol > 0, "train.tol", "> 0", t.tol)
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


def validate_process(section: DictConfig, key: str):
    """Range checks of a process section (at `key`); returns the Process it describes (plain Python)."""
    from shallownet import registry

    kind = registry.process_kind(section.method)
    check = getattr(kind.schema, "validate", None)
    if check is not None:
        check(section, key)
    return kind.build(section)


def validate_monitors(section: DictConfig) -> None:
    for name, kind in _table("monitor").items():
        check = getattr(kind.schema, "validate", None)
        if check is not None:
            check(section[name], f"monitor.{name}")
