"""The sweep's config schema, its checks, and the grid of (eta, initial scale) it describes.

Every check here runs before any run folder is created or any simulation starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional  # noqa: UP035 (omegaconf reads typing.Optional only)

import numpy as np
from omegaconf import DictConfig

from shallownet.checks import ConfigError, require, require_device, require_memory
from shallownet.stop import StopRule
from shallownet.sweep.chain import CHAIN_BACKENDS, CHAIN_INIT_SCHEMES, chain_bytes_per_run, chain_grid
from shallownet.sweep.engine import BACKENDS, StepScaleGrid, bytes_per_run
from shallownet.sweep.momentum import BYTES_PER_RUN as MOMENTUM_BYTES_PER_RUN
from shallownet.sweep.momentum import MOMENTUM_BACKENDS

SPACINGS = ("log", "linear")
SWEEP_METHODS = ("gd", "momentum", "nesterov")  # the processes with an exact few-numbers-per-run recursion
DEFAULT_MOMENTUM = 0.9
SWEEP_INIT_SCHEMES = ("imbalanced", "gaussian")
MAX_CHAIN_DEPTH = 64  # the chain kernel keeps a run's weights in registers
TORCH_CPU_CHUNK = 65536  # the torch backends on a CPU advance ~1e7 config-steps/s: progress every few s
MAX_ORBIT_STEPS = 100_000  # a period or exponent needs a few hundred steps; more is a typo, not a study
RESULT_BYTES_PER_RUN = 176  # the grid of results held in memory (and gathered on rank 0): ~18 float64s


@dataclass
class AxisConfig:
    start: float  # first value (> 0)
    stop: float  # last value
    num: int = 300  # number of values
    spacing: str = "log"  # log: geometric; linear: evenly spaced

    choices = {"spacing": SPACINGS}


@dataclass
class GridConfig:  # the paper's Figure 3: lr = 1/phi sits inside the range; lam(0) = 2 s^2 from 0.02 to 18
    lr: AxisConfig = field(default_factory=lambda: AxisConfig(start=0.01, stop=2.0))
    scale: AxisConfig = field(default_factory=lambda: AxisConfig(start=0.1, stop=3.0))


@dataclass
class SweepInitConfig:
    depth: int = 2  # 2: the shallow net of width `width`; L > 2: the depth-L scalar chain (width 1)
    scheme: str = "imbalanced"  # imbalanced | gaussian at depth 2 (as model.init.scheme of train); deeper: see the
    # chain sweep's schemes
    imbalance: float = 0.5  # Q(0) / lam(0) at depth 2; deeper: the spread q of the layer scales
    width: int = 10  # width d of the shallow net (1 when depth > 2)
    seed: int = 0  # random seed of the init


@dataclass
class SweepOptimConfig:
    """The process of every run: its step size is the grid's lr axis, so only the method and its other keys."""

    method: str = "gd"  # momentum, nesterov: torch.optim.SGD from zero velocity, depth 2 only
    momentum: Optional[float] = None  # noqa: UP045  beta of momentum / nesterov (null: 0.9); null for gd

    choices = {"method": SWEEP_METHODS}


@dataclass
class SweepTrainConfig:
    max_steps: int = 20000  # steps at most per run
    tol: float = 1.0e-8  # a run converged once |residual| <= tol
    divergence_norm: float = 1.0e12  # a run diverged once lam = |a|^2 + |b|^2 exceeds this (or is not finite)


@dataclass
class OrbitConfig:
    """What GD does after the budget, for each run left at it (shallownet/sweep/orbit_fields.py; momentum sweeps:
    not analysed)."""

    steps: int = 256  # GD steps taken after the budget: the orbit's period and Lyapunov exponent; 0: off
    tol: float = 1.0e-7  # |z_{t+p} - z_t| <= tol (1 + |z_t|) over those steps gives period p


@dataclass
class EngineConfig:
    backend: str = "numba"  # numba | torch | batched | cuda (depth 2, GD); chains: numba | torch | cuda; momentum:
    # numba | torch
    device: str = "cpu"  # cpu or cuda[:N] (the torch and cuda backends)
    chunk_size: int = 8192  # runs simulated at once (lowered to fit memory_mb)
    memory_mb: float = 2048.0  # working-memory budget for the runs in flight and the results


@dataclass
class SweepOutputConfig:
    root: str = "runs"  # the run folder is <root>/<name>/version_<n>
    name: str = "figure3"  # the run folder's parent under root
    tensorboard: bool = True  # also write the figures and grids to TensorBoard
    progress: bool = True  # show a progress bar


@dataclass
class SweepConfig:  # configs/sweep.yaml shows these defaults
    phi: float = 1.0  # the target Phi (>= 0; 0: the uv model of Lewkowycz et al. 2020)
    grid: GridConfig = field(default_factory=GridConfig)
    init: SweepInitConfig = field(default_factory=SweepInitConfig)
    optim: SweepOptimConfig = field(default_factory=SweepOptimConfig)
    train: SweepTrainConfig = field(default_factory=SweepTrainConfig)
    orbit: OrbitConfig = field(default_factory=OrbitConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: SweepOutputConfig = field(default_factory=SweepOutputConfig)

    renamed = {"grid.eta": "grid.lr", "stop": "train (train.max_steps, train.tol, train.divergence_norm)"}


def validate(cfg: DictConfig) -> None:
    """Range checks (types were checked on load), including that the results fit in memory."""
    # Phi = 0 is the uv model of Lewkowycz et al. 2020 (every minimum has a.b = 0): its catapult window
    require(cfg.phi >= 0, "phi", ">= 0 (a negative target is the positive one with b -> -b)", cfg.phi)
    check_axes(cfg.grid)
    init = cfg.init
    require(init.depth >= 2, "init.depth", "an integer >= 2", init.depth)
    schemes, backends = (SWEEP_INIT_SCHEMES, BACKENDS) if init.depth == 2 else (CHAIN_INIT_SCHEMES, CHAIN_BACKENDS)
    require(init.scheme in schemes, "init.scheme", f"one of {', '.join(schemes)} at init.depth={init.depth}",
            init.scheme)
    require(-1 < init.imbalance < 1, "init.imbalance", "in (-1, 1)", init.imbalance)
    require(init.width >= 1, "init.width", "an integer >= 1", init.width)
    # only depth 2 reduces to two numbers per run (U, V) at any width; deeper, the scalar chain does
    require(init.depth == 2 or init.width == 1, "init.width",
            "1 when init.depth > 2 (the depth-L sweep runs the scalar chain w_1 ... w_L)", init.width)
    require(init.depth <= MAX_CHAIN_DEPTH, "init.depth", f"at most {MAX_CHAIN_DEPTH}", init.depth)
    require_memory(cfg.grid.scale.num * init.width * 8 * 4, f"init.width={init.width} (the initial points)",
                   "init.width")
    t = cfg.train
    require(t.max_steps >= 1, "train.max_steps", "an integer >= 1", t.max_steps)
    require(t.tol > 0, "train.tol", "> 0", t.tol)
    require(t.divergence_norm > 0, "train.divergence_norm", "> 0", t.divergence_norm)
    require(0 <= cfg.orbit.steps <= MAX_ORBIT_STEPS, "orbit.steps", f"an integer in [0, {MAX_ORBIT_STEPS}]",
            cfg.orbit.steps)
    require(cfg.orbit.tol > 0, "orbit.tol", "> 0", cfg.orbit.tol)
    o = cfg.optim
    require(o.method in SWEEP_METHODS, "optim.method", f"one of {', '.join(SWEEP_METHODS)} (the processes the sweep "
            "engine runs exactly; other processes: shallownet compare)", o.method)
    if o.method == "gd":
        require(o.momentum is None, "optim.momentum", "null for optim.method=gd", o.momentum)
    else:
        require(init.depth == 2, "optim.method", "gd at init.depth > 2 (the chain engine has no momentum)", o.method)
        require(o.momentum is None or 0 <= o.momentum < 1, "optim.momentum", "in [0, 1) or null", o.momentum)
        backends = MOMENTUM_BACKENDS
    eng = cfg.engine
    where = f"optim.method={o.method}" if o.method != "gd" else f"init.depth={init.depth}"
    require(eng.backend in backends, "engine.backend", f"one of {', '.join(backends)} at {where}", eng.backend)
    require_device(eng.device, "engine.device")
    require(eng.backend != "numba" or eng.device == "cpu", "engine.device",
            "cpu for engine.backend=numba (use engine.backend=torch or cuda on a GPU)", eng.device)
    require(eng.backend != "cuda" or eng.device.startswith("cuda"), "engine.device",
            "a CUDA device for engine.backend=cuda", eng.device)
    require(eng.chunk_size >= 1, "engine.chunk_size", "an integer >= 1", eng.chunk_size)
    physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    require(0 < eng.memory_mb <= physical_mb, "engine.memory_mb",
            f"> 0 and at most this machine's memory ({physical_mb:.0f} MB)", eng.memory_mb)
    chunk_size(cfg)  # raises when not even one run fits


def check_axes(grid: DictConfig) -> None:
    """grid.lr and grid.scale: non-empty, positive, increasing."""
    for name in ("lr", "scale"):
        axis, key = grid[name], f"grid.{name}"
        require(axis.num >= 1, f"{key}.num", "an integer >= 1 (an empty grid has nothing to run)", axis.num)
        require(axis.spacing in SPACINGS, f"{key}.spacing", f"one of {', '.join(SPACINGS)}", axis.spacing)
        require(axis.start > 0, f"{key}.start", "> 0", axis.start)
        require(axis.stop > axis.start if axis.num > 1 else axis.stop >= axis.start, f"{key}.stop",
                f"> {key}.start={axis.start} (the grid is empty or inverted otherwise)", axis.stop)


def axis_values(axis: DictConfig) -> np.ndarray:
    if axis.spacing == "log":
        return np.geomspace(axis.start, axis.stop, axis.num)
    return np.linspace(axis.start, axis.stop, axis.num)


def n_runs(cfg: DictConfig) -> int:
    return cfg.grid.lr.num * cfg.grid.scale.num


def momentum(cfg: DictConfig) -> float:
    """beta of the sweep's process: 0 for GD."""
    if cfg.optim.method == "gd":
        return 0.0
    return DEFAULT_MOMENTUM if cfg.optim.momentum is None else cfg.optim.momentum


def chunk_size(cfg: DictConfig) -> int:
    """Runs per chunk: engine.chunk_size, lowered to fit engine.memory_mb next to the results grid."""
    budget = cfg.engine.memory_mb * 2**20
    results = n_runs(cfg) * RESULT_BYTES_PER_RUN
    if cfg.optim.method != "gd":
        per_run = MOMENTUM_BYTES_PER_RUN[cfg.engine.backend]
    elif cfg.init.depth == 2:
        per_run = bytes_per_run(cfg.engine.backend, cfg.init.width)
    else:
        per_run = chain_bytes_per_run(cfg.engine.backend, cfg.init.depth)
    fits = int((budget - results) // per_run)
    if fits < 1:
        raise ConfigError(
            f"the grid of {cfg.grid.lr.num} x {cfg.grid.scale.num} runs needs {results / 2**20:.0f} MB for its "
            f"results plus {per_run} bytes per run being simulated, more than engine.memory_mb="
            f"{cfg.engine.memory_mb:g}; shrink grid.lr.num / grid.scale.num or raise engine.memory_mb")
    chunk = min(cfg.engine.chunk_size, fits)
    if cfg.engine.backend != "numba" and cfg.engine.device == "cpu":
        chunk = min(chunk, TORCH_CPU_CHUNK)  # torch on the CPU: keep the progress bar moving
    return chunk


@dataclass(frozen=True)
class Grid(StepScaleGrid):
    """The runs of a sweep: run (i, j) has step eta[i] and starts from (a0[j], b0[j]) of scale[j], by GD, or by
    heavy-ball momentum beta (Nesterov's where nesterov) from zero velocity.

    Runs are numbered row-major, flat index i * len(scale) + j.
    """

    phi: float
    eta: np.ndarray  # [n_eta]
    scale: np.ndarray  # [n_scale]
    a0: np.ndarray  # [n_scale, width]
    b0: np.ndarray  # [n_scale, width]
    rule: StopRule
    beta: float = 0.0
    nesterov: bool = False


def build_grid(cfg: DictConfig):
    """The runs: a Grid of shallow nets (initial points from shallownet.model.initial_vectors, one per scale,
    the same seed for all) at depth 2, a ChainGrid of scalar chains deeper."""
    from shallownet.model import initial_vectors

    scale = axis_values(cfg.grid.scale)
    init = cfg.init
    if init.depth > 2:
        rule = StopRule(cfg.train.tol, cfg.train.divergence_norm, cfg.train.max_steps)
        return chain_grid(axis_values(cfg.grid.lr), scale, init.depth, cfg.phi, rule, init.scheme, init.imbalance,
                          init.seed)
    points = [initial_vectors(init.width, init.scheme, float(s), init.seed, init.imbalance) for s in scale]
    a0 = np.stack([a.numpy() for a, _ in points])
    b0 = np.stack([b.numpy() for _, b in points])
    rule = StopRule(cfg.train.tol, cfg.train.divergence_norm, cfg.train.max_steps)
    return Grid(cfg.phi, axis_values(cfg.grid.lr), scale, a0, b0, rule, momentum(cfg), cfg.optim.method == "nesterov")
