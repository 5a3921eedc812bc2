"""Vector-input kinds for the SGD experiments (light: no torch at import): data kinds linear_regression and
file (extensions/sgd_data.py), model kind diagonal_linear (extensions/diagonal_linear.py)."""

from dataclasses import dataclass
from typing import List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from shallownet.checks import require, require_memory
from shallownet.registry import register_data, register_model


@dataclass
class LinearRegressionConfig:
    n: int = 64  # training rows
    d: int = 8  # input dimension (n >= d)
    noise: float = 0.0  # standard deviation of the label noise
    seed: int = 0  # seed of X, the teacher w* and the noise
    spectrum: Optional[List[float]] = None  # noqa: UP006, UP045  the d eigenvalues of X^T X / n (null: all 1)

    @staticmethod
    def validate(cfg) -> None:
        d = cfg.data
        require(d.d >= 1, "data.d", "an integer >= 1", d.d)
        require(d.n >= d.d, "data.n", f"an integer >= data.d ({d.d})", d.n)
        require_memory(d.n * d.d * 8 * 4, f"data.n={d.n}, data.d={d.d}", "data.n")
        require(d.noise >= 0, "data.noise", ">= 0", d.noise)
        if d.spectrum is not None:
            spectrum = list(d.spectrum)
            require(len(spectrum) == d.d and all(s > 0 for s in spectrum), "data.spectrum",
                    f"{d.d} positive eigenvalues (data.d) or null", spectrum)


@dataclass
class DiagonalLinearConfig:
    scale: float = 0.5  # a_j, b_j ~ scale * N(0, 1) at init
    seed: int = 0  # seed of the init

    @staticmethod
    def validate(cfg) -> None:
        require(cfg.model.scale > 0, "model.scale", "> 0", cfg.model.scale)


register_data("linear_regression", LinearRegressionConfig, "extensions.sgd_data:load_linear_regression")
register_model("diagonal_linear", DiagonalLinearConfig, "extensions.diagonal_linear:build_diagonal_linear",
               default_data="linear_regression", convergence="loss", loss="half_mse")
