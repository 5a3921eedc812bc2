"""Loading and validating omegaconf configs: a YAML file, then `key=value` overrides, over a schema.

Every user mistake becomes a ConfigError with a one-line message that names the key or file and what
is allowed; the CLI turns it into exit status 2 before any work starts.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

DTYPES = ("float64", "float32")


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the key or file and what is allowed."""


# --- the schema shared by every single-run command ----------------------------------------------------

@dataclass
class InitConfig:
    scheme: str = "gaussian"
    scale: float = 1.0
    seed: int = 0
    imbalance: float = 0.5
    a0: Optional[list[float]] = None  # noqa: UP045 (omegaconf reads typing.Optional only)
    b0: Optional[list[float]] = None  # noqa: UP045


@dataclass
class ModelConfig:
    width: int = 10
    phi: float = 1.0
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class DataConfig:
    n_points: int = 1
    noise: float = 0.0
    seed: int = 0


@dataclass
class OptimConfig:
    lr: float = 0.1


@dataclass
class TrainConfig:
    max_steps: int = 2000
    tol: float = 1.0e-10
    divergence_norm: float = 1.0e12
    device: str = "cpu"
    dtype: str = "float64"


@dataclass
class SharpnessConfig:
    every_n_steps: int = 10
    tol: float = 1.0e-10
    max_iter: int = 1000


@dataclass
class MonitorConfig:
    every_n_steps: int = 1
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)


@dataclass
class OutputConfig:
    root: str = "runs"
    name: str = "train"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# --- loading -----------------------------------------------------------------------------------------

def load_config(schema: type, path: str | Path | None, overrides: list[str]) -> DictConfig:
    """Merge schema defaults, the YAML file (if any) and `key=value` overrides; check names and types."""
    layers = [OmegaConf.structured(schema)]
    if path is not None:
        layers.append(_read_yaml(Path(path)))
    layers.append(_parse_overrides(overrides))
    merged = layers[0]
    for layer in layers[1:]:
        _check_known_keys(schema, OmegaConf.to_container(layer), prefix="")
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(_describe(err)) from None
    _check_finite(merged, prefix="")
    OmegaConf.set_readonly(merged, True)
    return merged


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {path}: no such file")
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: cannot be read (not UTF-8 text)") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a mapping of keys, not a {type(data).__name__}")
    return OmegaConf.create(data)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {_describe(err)}") from None


def _check_known_keys(schema: type, data: Any, prefix: str) -> None:
    """Unknown keys name the allowed ones (omegaconf's own message does not)."""
    if not isinstance(data, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            where = f" under '{prefix[:-1]}'" if prefix else ""
            raise ConfigError(f"unknown config key '{full}'; allowed{where}: {', '.join(fields)}")
        sub = fields[key].type
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section (keys: "
                                  f"{', '.join(f.name for f in dataclasses.fields(sub))}), not a value")
            _check_known_keys(sub, value, prefix=f"{full}.")


def _check_finite(node: Any, prefix: str) -> None:
    if isinstance(node, DictConfig):
        for key in node:
            _check_finite(node[key], f"{prefix}{key}.")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key '{prefix[:-1]}' must be a finite number, got {node}")
    elif OmegaConf.is_list(node):
        for i, item in enumerate(node):
            _check_finite(item, f"{prefix[:-1]}[{i}].")


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        return f"unknown config key '{key}'"
    return f"config key '{key}': {message}" if key else message


# --- range checks for a single run -------------------------------------------------------------------

def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise a ConfigError naming `key` and what it allows unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


def require_device(device: str, key: str) -> None:
    """`device` is 'cpu', or 'cuda[:N]' with that GPU present on this machine."""
    require(device == "cpu" or device.startswith("cuda"), key, "cpu or cuda[:N]", device)
    if device == "cpu":
        return
    import torch

    index = device.partition(":")[2]
    in_range = index == "" or (index.isdigit() and int(index) < torch.cuda.device_count())
    present = torch.cuda.is_available() and in_range
    require(present, key, "cpu or a CUDA device present on this machine", device)


def validate_run(cfg: DictConfig) -> None:
    """Range checks for RunConfig (types were checked on load)."""
    from shallownet.model import INIT_SCHEMES

    m, init = cfg.model, cfg.model.init
    require(m.width >= 1, "model.width", "an integer >= 1", m.width)
    require(init.scheme in INIT_SCHEMES, "model.init.scheme", f"one of {', '.join(INIT_SCHEMES)}", init.scheme)
    require(init.scale > 0, "model.init.scale", "> 0", init.scale)
    require(-1 < init.imbalance < 1, "model.init.imbalance", "in (-1, 1)", init.imbalance)
    if init.scheme == "explicit":
        for key in ("a0", "b0"):
            vec = init[key]
            require(vec is not None and len(vec) == m.width, f"model.init.{key}",
                    f"a list of model.width={m.width} numbers for scheme explicit", vec)
    require(cfg.data.n_points >= 1, "data.n_points", "an integer >= 1", cfg.data.n_points)
    require(cfg.data.noise >= 0, "data.noise", ">= 0", cfg.data.noise)
    require(cfg.data.n_points > 1 or cfg.data.noise == 0, "data.noise", "0 when data.n_points is 1",
            cfg.data.noise)
    require(cfg.optim.lr > 0, "optim.lr", "> 0", cfg.optim.lr)
    t = cfg.train
    require(t.max_steps >= 1, "train.max_steps", "an integer >= 1", t.max_steps)
    require(t.tol > 0, "train.tol", "> 0", t.tol)
    require(t.divergence_norm > 0, "train.divergence_norm", "> 0", t.divergence_norm)
    require(t.dtype in DTYPES, "train.dtype", f"one of {', '.join(DTYPES)}", t.dtype)
    require_device(t.device, "train.device")
    mon = cfg.monitor
    require(mon.every_n_steps >= 1, "monitor.every_n_steps", "an integer >= 1", mon.every_n_steps)
    require(mon.sharpness.every_n_steps >= 0, "monitor.sharpness.every_n_steps",
            "an integer >= 0 (0 turns the sharpness monitor off)", mon.sharpness.every_n_steps)
    require(mon.sharpness.tol > 0, "monitor.sharpness.tol", "> 0", mon.sharpness.tol)
    require(mon.sharpness.max_iter >= 1, "monitor.sharpness.max_iter", "an integer >= 1", mon.sharpness.max_iter)
