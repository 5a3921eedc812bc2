"""Vector-input kinds for the SGD experiments (light: no torch at import): data kinds linear_regression and
file (an .npz of x and y, for every model whose input shape fits; extensions/sgd_data.py), model kind
diagonal_linear (extensions/diagonal_linear.py)."""

from dataclasses import dataclass
from typing import List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from shallownet.checks import ConfigError, require, require_memory
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


def read_npz(path: str) -> dict:
    """The arrays x, y (and x_test, y_test if both are there) of an .npz, pickles refused; any defect a
    ConfigError naming data.path, in one line."""
    import numpy as np

    def refuse(why: str):
        raise ConfigError(f"config key 'data.path' ({path!r}): {why}")

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("x", "y", "x_test", "y_test") if name in archive.files}
    except FileNotFoundError:
        refuse("no such file")
    except ValueError as error:  # object arrays need pickles, which are refused; or not an .npz at all
        refuse(f"not an .npz of plain arrays ({str(error).splitlines()[0]})")
    except OSError as error:
        refuse(f"cannot be read as an .npz ({error})")
    for name in ("x", "y"):
        if name not in arrays:
            refuse(f"holds no array {name!r} (it has {sorted(arrays) or 'none of x, y, x_test, y_test'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        refuse("holds one of x_test, y_test without the other")
    for x_name, y_name in (("x", "y"), ("x_test", "y_test")):
        if x_name not in arrays:
            continue
        x, y = arrays[x_name], arrays[y_name]
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y) or len(x) == 0:
            refuse(f"{x_name} {x.shape} and {y_name} {y.shape} must have the same number of rows, at least one")
        for name, array in ((x_name, x), (y_name, y)):
            if array.dtype.kind not in "biuf":
                refuse(f"{name} has dtype {array.dtype}, not numbers")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                refuse(f"{name} holds NaN or infinite values")
    if "x_test" in arrays and arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
        refuse(f"x_test rows {arrays['x_test'].shape[1:]} differ from x rows {arrays['x'].shape[1:]}")
    return arrays


@dataclass
class FileConfig:
    path: str = ""  # an .npz holding arrays x and y (optionally x_test and y_test); loaded without pickles

    @staticmethod
    def validate(cfg) -> None:
        require(bool(cfg.data.path), "data.path", "the path of an .npz holding x and y", cfg.data.path)
        read_npz(cfg.data.path)


register_data("linear_regression", LinearRegressionConfig, "extensions.sgd_data:load_linear_regression")
register_model("diagonal_linear", DiagonalLinearConfig, "extensions.diagonal_linear:build_diagonal_linear",
               default_data="linear_regression", convergence="loss", loss="half_mse")
register_data("file", FileConfig, "extensions.sgd_data:load_file")
