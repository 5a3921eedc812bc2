"""The shallow net's registry entries: model kind `scalar_linear`, data kind `points`."""

from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from shallownet.checks import require, require_memory
from shallownet.registry import FullBatchData, register_data, register_model

INIT_SCHEMES = ("gaussian", "explicit", "imbalanced")  # what shallownet.model.initial_vectors draws


@dataclass
class InitConfig:
    scheme: str = "gaussian"  # gaussian: a, b iid N(0, scale^2/width); imbalanced: lam(0) = 2 scale^2, Q(0) = imbalance
    # lam(0), random directions; explicit: a0, b0
    scale: float = 1.0  # size of the init: lam(0) = |a|^2 + |b|^2 is (about) 2 scale^2
    seed: int = 0  # random seed of the init
    imbalance: float = 0.5  # imbalanced: Q(0) / lam(0) = (|a|^2 - |b|^2) / (|a|^2 + |b|^2), in (-1, 1)
    a0: Optional[List[float]] = None  # noqa: UP006, UP045  explicit: the initial a (model.width numbers)
    b0: Optional[List[float]] = None  # noqa: UP006, UP045  explicit: the initial b (model.width numbers)

    choices = {"scheme": INIT_SCHEMES}


@dataclass
class ScalarLinearConfig:
    width: int = 10  # hidden width d of f(x) = (a . b) x
    phi: float = 1.0  # the target slope Phi (with data.kind=points)
    init: InitConfig = field(default_factory=InitConfig)

    @staticmethod
    def validate(cfg) -> None:
        m, init = cfg.model, cfg.model.init
        require(m.width >= 1, "model.width", "an integer >= 1", m.width)
        require_memory(m.width * 8 * 40, f"model.width={m.width} (a, b and their gradients and HVP buffers)",
                       "model.width")
        require(init.scheme in INIT_SCHEMES, "model.init.scheme", f"one of {', '.join(INIT_SCHEMES)}", init.scheme)
        require(init.scale > 0, "model.init.scale", "> 0", init.scale)
        require(-1 < init.imbalance < 1, "model.init.imbalance", "in (-1, 1)", init.imbalance)
        if init.scheme == "explicit":
            for key in ("a0", "b0"):
                vec = init[key]
                require(vec is not None and len(vec) == m.width, f"model.init.{key}",
                        f"a list of model.width={m.width} numbers for scheme explicit",
                        None if vec is None else list(vec))


@dataclass
class PointsConfig:
    n_points: int = 1  # number of regression points x_i (1: the single point x = 1, y = phi)
    noise: float = 0.0  # standard deviation of the label noise (0 when n_points is 1)
    seed: int = 0  # random seed of the points

    @staticmethod
    def validate(cfg) -> None:
        d = cfg.data
        require(d.n_points >= 1, "data.n_points", "an integer >= 1", d.n_points)
        require_memory(d.n_points * 8 * 8, f"data.n_points={d.n_points} (x, y and the per-point work)",
                       "data.n_points")
        require(d.noise >= 0, "data.noise", ">= 0", d.noise)
        require(d.n_points > 1 or d.noise == 0, "data.noise", "0 when data.n_points is 1", d.noise)
        require("phi" in cfg.model, "data.kind", "used with a model that has a target model.phi", "points")


@register_data("points", PointsConfig)
def load_points(cfg, dtype) -> FullBatchData:
    """Univariate regression points for the target cfg.model.phi (shallownet.data.regression_points)."""
    from shallownet.data import effective_phi, regression_points

    x, y = regression_points(cfg.data.n_points, cfg.model.phi, cfg.data.noise, cfg.data.seed, dtype=dtype)
    return FullBatchData(x, y, target=effective_phi(x, y))


@register_model("scalar_linear", ScalarLinearConfig, default_data="points", convergence="residual")
def build_scalar_linear(cfg, data: FullBatchData):
    from shallownet.model import ScalarLinearNet, initial_vectors

    init = cfg.model.init
    a0, b0 = initial_vectors(cfg.model.width, init.scheme, init.scale, init.seed, init.imbalance, init.a0, init.b0,
                             dtype=data.x.dtype)
    return ScalarLinearNet(a0, b0, phi=data.target)
