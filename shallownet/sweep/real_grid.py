"""The config schema of a sweep over real nets (`shallownet sweep model.kind=mlp ...`) and its checks.

A real-net sweep trains every cell (step size x initial scale x seed) of a registered model by full-batch
GD on the vmapped engine (shallownet.sweep.vmap_engine). Its `model:` and `data:` sections are those of
`shallownet train` (the registry's kind sections), so any cell reruns alone as one `shallownet train`
with optim.lr, model.init_scale and model.seed set (train_overrides() writes that command line).

Light: no torch here; everything is checked before the run folder exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from omegaconf import DictConfig, OmegaConf

from shallownet.checks import ConfigError, require, require_device
from shallownet.config import DTYPES, kind_section
from shallownet.losses import LOSSES
from shallownet.sweep.grid import AxisConfig, SweepOutputConfig, check_axes

SWEPT_MODEL_KEYS = ("seed", "init_scale")  # what each cell sets in the model section


@dataclass
class RealGridConfig:  # eta x lambda_0 from ~0.3 to ~10 for the default digits MLP: lazy, catapult, diverged
    lr: AxisConfig = field(default_factory=lambda: AxisConfig(start=0.05, stop=2.0, num=12))
    scale: AxisConfig = field(default_factory=lambda: AxisConfig(start=0.5, stop=1.5, num=6))
    seeds: List[int] = field(default_factory=lambda: [0])  # noqa: UP006  model.seed of each run's init


@dataclass
class RealSweepTrainConfig:
    max_steps: int = 1000  # steps at most per run
    tol: float = 1.0e-3  # converged once the loss <= tol (train.convergence=loss of `shallownet train`)
    divergence_norm: float = 1.0e12  # diverged once the squared parameter norm exceeds this (or is not finite)
    dtype: str = "float64"  # the parameters' and data's dtype

    choices = {"dtype": DTYPES}


@dataclass
class RealSharpnessConfig:
    every_n_steps: int = 50  # power-iteration steps at this cadence keep each run's vector warm (0: never)
    iterations: int = 20  # power-iteration steps at each cadence and at the end of a run
    initial_iterations: int = 100  # power-iteration steps for the initial sharpness lambda_0
    margin: float = 0.1  # edge of stability: eta * final sharpness >= 2 (1 - margin)


@dataclass
class RealEngineConfig:
    device: str = "cpu"  # cpu or cuda[:N]
    chunk_size: int = 256  # runs trained at once (lowered to fit memory_mb)
    memory_mb: float = 2048.0  # working-memory budget of the runs in flight


@dataclass
class RealOutputConfig(SweepOutputConfig):
    name: str = "phase_map"  # the run folder's parent under root
    save_params: bool = False  # also write params.npz: every run's final parameters [n_lr, n_scale, n_seeds, ...]


@dataclass
class RealSweepConfig:
    model: Any = kind_section("model", default="mlp")  # a registered model kind with model.seed and
    # model.init_scale (functional: no BatchNorm statistics, no dropout); its keys follow
    data: Any = kind_section("data")  # the data set (null: the model kind's default); its keys follow
    loss: Optional[str] = None  # noqa: UP045  a name in shallownet.losses.LOSSES; null: the model's own
    grid: RealGridConfig = field(default_factory=RealGridConfig)
    train: RealSweepTrainConfig = field(default_factory=RealSweepTrainConfig)
    sharpness: RealSharpnessConfig = field(default_factory=RealSharpnessConfig)
    engine: RealEngineConfig = field(default_factory=RealEngineConfig)
    output: RealOutputConfig = field(default_factory=RealOutputConfig)

    choices = {"loss": tuple(LOSSES)}


def validate(cfg: DictConfig) -> None:
    """Range checks (types were checked on load); the model and data kinds check their own sections."""
    from shallownet import registry

    model_kind = registry.model_kind(cfg.model.kind)
    own = {f.name for f in dataclasses.fields(model_kind.schema)}
    missing = [key for key in SWEPT_MODEL_KEYS if key not in own]
    if missing:
        raise ConfigError(f"config key 'model.kind' {cfg.model.kind} has no model.{missing[0]}, which a real-net sweep "
                          f"sets per run; sweep a kind with {' and '.join('model.' + k for k in SWEPT_MODEL_KEYS)} "
                          f"({', '.join(k for k in registry.known('model') if _has_keys(k))})")
    for kind in (model_kind, registry.data_kind(cfg.data.kind)):
        check = getattr(kind.schema, "validate", None)
        if check is not None:
            check(cfg)
    require(cfg.loss is None or cfg.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)} or null", cfg.loss)
    check_axes(cfg.grid)
    seeds = list(cfg.grid.seeds)
    require(len(seeds) >= 1 and len(set(seeds)) == len(seeds), "grid.seeds", "a non-empty list of distinct integers",
            seeds)
    t = cfg.train
    require(t.max_steps >= 1, "train.max_steps", "an integer >= 1", t.max_steps)
    require(t.tol > 0, "train.tol", "> 0", t.tol)
    require(t.divergence_norm > 0, "train.divergence_norm", "> 0", t.divergence_norm)
    s = cfg.sharpness
    require(s.every_n_steps >= 0, "sharpness.every_n_steps", "an integer >= 0", s.every_n_steps)
    require(s.iterations >= 1, "sharpness.iterations", "an integer >= 1", s.iterations)
    require(s.initial_iterations >= 1, "sharpness.initial_iterations", "an integer >= 1", s.initial_iterations)
    require(0 <= s.margin < 1, "sharpness.margin", "in [0, 1)", s.margin)
    e = cfg.engine
    require_device(e.device, "engine.device")
    require(e.chunk_size >= 1, "engine.chunk_size", "an integer >= 1", e.chunk_size)
    require(e.memory_mb > 0, "engine.memory_mb", "> 0", e.memory_mb)


def _has_keys(kind: str) -> bool:
    from shallownet import registry

    own = {f.name for f in dataclasses.fields(registry.model_kind(kind).schema)}
    return all(key in own for key in SWEPT_MODEL_KEYS)


def n_runs(cfg: DictConfig) -> int:
    return cfg.grid.lr.num * cfg.grid.scale.num * len(cfg.grid.seeds)


def chunk_size(cfg: DictConfig, bytes_per_run: int) -> int:
    """Runs per chunk: engine.chunk_size, lowered to fit engine.memory_mb; a ConfigError when one run does not."""
    fits = int(cfg.engine.memory_mb * 2**20 // max(bytes_per_run, 1))
    if fits < 1:
        raise ConfigError(f"config key 'engine.memory_mb': one run of model.kind={cfg.model.kind} needs "
                          f"{bytes_per_run / 2**20:.3g} MB of working memory, more than engine.memory_mb="
                          f"{cfg.engine.memory_mb:g}; raise it or shrink the model or data")
    return min(cfg.engine.chunk_size, fits)


def run_config(cfg: DictConfig, lr: float, scale: float, seed: int) -> list[str]:
    """The `shallownet train` overrides that rerun one cell alone (same model, data, loss, stop rule and
    dtype; GD with optim.lr = lr; model.init_scale = scale, model.seed = seed; converged on the loss)."""
    model = OmegaConf.to_container(cfg.model)
    model.update(seed=int(seed), init_scale=float(scale))
    data = OmegaConf.to_container(cfg.data)
    items = [f"model.{k}={_literal(v)}" for k, v in model.items()]
    items += [f"data.{k}={_literal(v)}" for k, v in data.items()]
    if cfg.loss is not None:
        items.append(f"loss={cfg.loss}")
    t = cfg.train
    return [*items, "optim.method=gd", f"optim.lr={float(lr)!r}", f"train.max_steps={t.max_steps}",
            f"train.tol={float(t.tol)!r}", f"train.divergence_norm={float(t.divergence_norm)!r}",
            "train.convergence=loss", f"train.dtype={t.dtype}", f"train.device={cfg.engine.device}"]


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return str(value)
