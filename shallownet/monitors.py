"""The built-in monitors, each with its config section `monitor.<name>` (extensions register theirs the same way).

A monitor's builder takes the whole run config and its own section and returns the callback, or None
when the section turns it off (every_n_steps = 0). Builders import Lightning only when a run is built.
"""

from dataclasses import dataclass

from shallownet.checks import require
from shallownet.registry import register_monitor


def require_cadence(section, key: str, off_allowed: bool = True) -> None:
    """every_n_steps: an integer >= 1, or 0 (off) where the monitor can be off."""
    lowest = 0 if off_allowed else 1
    meaning = "an integer >= 0 (0: off)" if off_allowed else "an integer >= 1"
    require(section.every_n_steps >= lowest, f"{key}.every_n_steps", meaning, section.every_n_steps)


@dataclass
class DynamicsConfig:
    every_n_steps: int = 1  # dynamics/* and process/* tags; the run summary's init / final values

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key, off_allowed=False)


@dataclass
class SharpnessConfig:
    every_n_steps: int = 10  # curvature/* tags; 0: off
    tol: float = 1.0e-10  # relative residual |Hv - Sv| / |S| of the eigen-solver
    max_iter: int = 1000  # eigen-solver iterations at most per measurement
    top_k: int = 1  # top Hessian eigenvalues measured (curvature/eigenvalue_<i> when > 1)

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)
        require(section.tol > 0, f"{key}.tol", "> 0", section.tol)
        require(section.max_iter >= 1, f"{key}.max_iter", "an integer >= 1", section.max_iter)
        require(section.top_k >= 1, f"{key}.top_k", "an integer >= 1", section.top_k)


@dataclass
class BlockSharpnessConfig:
    every_n_steps: int = 0  # curvature/block_sharpness_<block> tags: top eigenvalue of each block's Hessian; 0: off
    tol: float = 1.0e-10  # relative residual of each block's eigen-solve
    max_iter: int = 1000  # eigen-solver iterations at most per block and measurement
    depth: int = 1  # blocks by the first `depth` parts of the parameter names (1: top-level modules)

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)
        require(section.tol > 0, f"{key}.tol", "> 0", section.tol)
        require(section.max_iter >= 1, f"{key}.max_iter", "an integer >= 1", section.max_iter)
        require(section.depth >= 1, f"{key}.depth", "an integer >= 1", section.depth)


@dataclass
class TheoryConfig:
    every_n_steps: int = 0  # theory/* tags: the shallow net's exact one-step predictions under GD; 0: off

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)


@dataclass
class BatchSharpnessConfig:
    every_n_steps: int = 0  # curvature/step_sharpness, batch_sharpness, gni, batch_lambda_max (+ _stderr); 0: off
    n_batches: int = 100  # fresh batches (of the training batch size) per Monte Carlo estimate
    exact: bool = False  # enumerate every one of the C(n, b) batches instead (small data only)
    seed: int = 0  # seed of the monitor's own batch generator (never the run's)

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)
        require(section.n_batches >= 2, f"{key}.n_batches", "an integer >= 2", section.n_batches)


@dataclass
class StabilizationConfig:
    every_n_steps: int = 0  # stabilization/* tags: self-stabilisation alpha, beta, delta and x (GD only); 0: off
    tol: float = 1.0e-10  # relative residual of the two eigen-solves per measurement (at theta and theta_dagger)
    max_iter: int = 1000  # eigen-solver iterations at most per solve

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)
        require(section.tol > 0, f"{key}.tol", "> 0", section.tol)
        require(section.max_iter >= 1, f"{key}.max_iter", "an integer >= 1", section.max_iter)


@register_monitor("dynamics", DynamicsConfig)
def build_dynamics(cfg, section):
    from shallownet.callbacks.dynamics import DynamicsMonitor

    return DynamicsMonitor(section.every_n_steps)


@register_monitor("sharpness", SharpnessConfig)
def build_sharpness(cfg, section):
    if not section.every_n_steps:
        return None
    from shallownet.callbacks.sharpness import SharpnessMonitor

    return SharpnessMonitor(every_n_steps=section.every_n_steps, tol=section.tol, max_iter=section.max_iter,
                            top_k=section.top_k, chunk_size=cfg.train.chunk_size)


@register_monitor("block_sharpness", BlockSharpnessConfig)
def build_block_sharpness(cfg, section):
    if not section.every_n_steps:
        return None
    from shallownet.callbacks.block_sharpness import BlockSharpnessMonitor

    return BlockSharpnessMonitor(every_n_steps=section.every_n_steps, tol=section.tol, max_iter=section.max_iter,
                                 depth=section.depth, chunk_size=cfg.train.chunk_size)


@register_monitor("theory", TheoryConfig)
def build_theory(cfg, section):
    if not section.every_n_steps:
        return None
    from shallownet.callbacks.theory import TheoryMonitor

    return TheoryMonitor(section.every_n_steps)


@register_monitor("batch_sharpness", BatchSharpnessConfig)
def build_batch_sharpness(cfg, section):
    if not section.every_n_steps:
        return None
    from shallownet.callbacks.batch_sharpness import BatchSharpnessMonitor

    return BatchSharpnessMonitor(section.every_n_steps, n_batches=section.n_batches, exact=section.exact,
                                 seed=section.seed)


@register_monitor("stabilization", StabilizationConfig)
def build_stabilization(cfg, section):
    if not section.every_n_steps:
        return None
    from shallownet.callbacks.stabilization import StabilizationMonitor
    from shallownet.training import planned_processes

    require(planned_processes(cfg) == 1, "monitor.stabilization.every_n_steps", "0 under DDP (the third-order "
            "products run in one process only)", section.every_n_steps)
    return StabilizationMonitor(section.every_n_steps, tol=section.tol, max_iter=section.max_iter,
                                chunk_size=cfg.train.chunk_size)
