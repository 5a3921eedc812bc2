"""The deep linear nets' registry entries (light: no torch at import): model kinds deep_scalar_linear,
scalar_chain, deep_linear (extensions/deep_linear.py), data kind matrix_regression (extensions/deep_data.py)
and the monitor deep_theory (extensions/deep_monitor.py)."""

import math
from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from shallownet.checks import require, require_memory
from shallownet.monitors import require_cadence
from shallownet.registry import register_data, register_model, register_monitor

INIT_SCHEMES = ("gaussian", "balanced", "imbalanced", "explicit")


def data_section(cfg):
    """The `data:` section, from a whole run config or from the section itself."""
    return cfg.data if "data" in cfg else cfg


@dataclass
class DeepInitConfig:
    scheme: str = "gaussian"  # balanced: equal layers; imbalanced: set layer-pair imbalances; explicit: weights
    scale: float = 1.0  # size of the init (gaussian: per-entry std scale / sqrt(fan-in))
    seed: int = 0  # random seed of the init
    imbalance: List[float] = field(default_factory=lambda: [0.5])  # noqa: UP006  one per layer pair, or one
    weights: Optional[List[float]] = None  # noqa: UP006, UP045  explicit: every parameter entry, layer by layer

    choices = {"scheme": INIT_SCHEMES}


@dataclass
class DeepScalarLinearConfig:
    depth: int = 3  # number of layers L (>= 2)
    width: int = 10  # hidden width
    phi: float = 1.0  # the target slope Phi
    init: DeepInitConfig = field(default_factory=DeepInitConfig)

    @staticmethod
    def validate(cfg) -> None:
        m = cfg.model
        require(m.depth >= 2, "model.depth", "an integer >= 2", m.depth)
        require(m.width >= 1, "model.width", "an integer >= 1", m.width)
        n_params = 2 * m.width + (m.depth - 2) * m.width * m.width
        require_memory(n_params * 8.0 * 40, f"model.depth={m.depth}, model.width={m.width} (weights, gradients "
                       "and HVP buffers)", "model.width")
        _validate_init(m.init, m.depth, n_params)


@dataclass
class ScalarChainConfig:
    depth: int = 3  # number of scalar weights w_1 ... w_L (2 to 10000)
    phi: float = 1.0  # the target Phi = w_1 ... w_L
    init: DeepInitConfig = field(default_factory=DeepInitConfig)

    @staticmethod
    def validate(cfg) -> None:
        m = cfg.model
        require(2 <= m.depth <= 10_000, "model.depth", "an integer in [2, 10000]", m.depth)
        _validate_init(m.init, m.depth, m.depth)


@dataclass
class DeepLinearConfig:
    hidden: List[int] = field(default_factory=lambda: [8, 8])  # noqa: UP006  widths d_1..d_(L-1); L = len + 1
    init: DeepInitConfig = field(default_factory=DeepInitConfig)

    @staticmethod
    def validate(cfg) -> None:
        m = cfg.model
        require(len(m.hidden) >= 1 and all(h >= 1 for h in m.hidden), "model.hidden",
                "a non-empty list of integers >= 1", list(m.hidden))
        n_params = None  # known only where the data says d_in and d_out before it is loaded
        if "d_in" in cfg.data and "d_out" in cfg.data:
            widths = [cfg.data.d_in, *m.hidden, cfg.data.d_out]
            n_params = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
            require_memory(n_params * 8.0 * 40, f"model.hidden={list(m.hidden)} (weights, gradients and HVP "
                           "buffers)", "model.hidden")
        _validate_init(m.init, len(m.hidden) + 1, n_params)


def _validate_init(init, depth: int, n_params: int | None) -> None:
    require(init.scheme in INIT_SCHEMES, "model.init.scheme", f"one of {', '.join(INIT_SCHEMES)}", init.scheme)
    require(init.scale > 0 and math.isfinite(init.scale), "model.init.scale", "a finite number > 0", init.scale)
    if init.scheme == "imbalanced":
        values = list(init.imbalance)
        require(len(values) in (1, depth - 1), "model.init.imbalance",
                f"a list of 1 or model.depth - 1 = {depth - 1} numbers", values)
        require(all(-1 < q < 1 for q in values), "model.init.imbalance", "numbers in (-1, 1)", values)
    if init.scheme == "explicit":
        weights = None if init.weights is None else list(init.weights)
        require(weights is not None and (n_params is None or len(weights) == n_params), "model.init.weights",
                f"a list of all {n_params} parameter entries for scheme explicit", weights)


@dataclass
class MatrixRegressionConfig:
    n_samples: int = 200  # training rows
    d_in: int = 6  # input dimension
    d_out: int = 4  # output dimension
    rank: Optional[int] = None  # noqa: UP045 (omegaconf reads typing.Optional only); null: min(d_in, d_out)
    condition: float = 10.0  # s_max / s_min over the rank nonzero singular values of A* (1 when rank is 1)
    top_singular_value: float = 1.0  # largest singular value of the target matrix A*
    noise: float = 0.0  # standard deviation of the label noise
    whiten: bool = False  # X^T X / n = I (needs n_samples >= d_in)
    n_test: int = 0  # test rows drawn like the training rows (never whitened)
    seed: int = 0  # random seed of the data

    @staticmethod
    def validate(cfg) -> None:
        d = data_section(cfg)
        require(d.n_samples >= 1, "data.n_samples", "an integer >= 1", d.n_samples)
        require(d.d_in >= 1, "data.d_in", "an integer >= 1", d.d_in)
        require(d.d_out >= 1, "data.d_out", "an integer >= 1", d.d_out)
        require_memory(8.0 * 4 * (d.n_samples + d.n_test) * (d.d_in + d.d_out), "the matrix-regression data",
                       "data.n_samples")
        top = min(d.d_in, d.d_out)
        require(d.rank is None or 1 <= d.rank <= top, "data.rank", f"null or an integer in [1, {top}]", d.rank)
        require(d.condition >= 1 and math.isfinite(d.condition), "data.condition", "a finite number >= 1",
                d.condition)
        rank = top if d.rank is None else d.rank
        require(rank > 1 or d.condition == 1, "data.condition", "1 when the rank is 1", d.condition)
        require(d.top_singular_value > 0, "data.top_singular_value", "> 0", d.top_singular_value)
        require(d.noise >= 0, "data.noise", ">= 0", d.noise)
        require(not d.whiten or d.n_samples >= d.d_in, "data.whiten", "false when data.n_samples < data.d_in",
                d.whiten)
        require(d.n_test >= 0, "data.n_test", "an integer >= 0", d.n_test)


@dataclass
class DeepTheoryConfig:
    every_n_steps: int = 0  # one-step predictions of every layer imbalance D_l of a linear net (deep_theory/*)

    @staticmethod
    def validate(section, key: str) -> None:
        require_cadence(section, key)


register_model("deep_scalar_linear", DeepScalarLinearConfig, "extensions.deep_linear:build_deep_scalar_linear",
               default_data="points", convergence="residual", loss="half_mse")
register_model("scalar_chain", ScalarChainConfig, "extensions.deep_linear:build_scalar_chain",
               default_data="points", convergence="residual", loss="half_mse")
register_model("deep_linear", DeepLinearConfig, "extensions.deep_linear:build_deep_linear",
               default_data="matrix_regression", convergence="loss", loss="half_sum_mse")
register_data("matrix_regression", MatrixRegressionConfig, "extensions.deep_data:load_matrix_regression")
register_monitor("deep_theory", DeepTheoryConfig, "extensions.deep_monitor:build_monitor")
