"""Linear regression data with a chosen spectrum of X^T X (data.kind=linear_regression), and a user's own
.npz (data.kind=file)."""

from __future__ import annotations

import torch

from shallownet.registry import FullBatchData


def linear_regression(n: int, d: int, noise: float, seed: int, spectrum: list[float] | None,
                      dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X, y, w*): X^T X / n = V diag(spectrum) V^T exactly (V a random rotation), y = X w* + noise N(0, 1),
    w* ~ N(0, I / d)."""
    generator = torch.Generator().manual_seed(seed)
    rows, _ = torch.linalg.qr(torch.randn(n, d, generator=generator, dtype=torch.float64))  # orthonormal columns
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    eigenvalues = torch.ones(d, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum,
                                                                                            dtype=torch.float64)
    x = n**0.5 * rows @ torch.diag(eigenvalues.sqrt()) @ rotation.T
    teacher = torch.randn(d, generator=generator, dtype=torch.float64) / d**0.5
    y = x @ teacher + noise * torch.randn(n, generator=generator, dtype=torch.float64)
    return x.to(dtype), y.to(dtype), teacher.to(dtype)


def load_linear_regression(cfg, dtype) -> FullBatchData:
    d = cfg.data
    x, y, _ = linear_regression(d.n, d.d, d.noise, d.seed, None if d.spectrum is None else list(d.spectrum), dtype)
    return FullBatchData(x, y, target=None)


def load_file(cfg, dtype) -> FullBatchData:
    """x, y (and x_test, y_test) of data.path: floating arrays in the run's dtype, integer ones (labels,
    tokens) as int64."""
    from extensions.sgd_kinds import read_npz

    def tensor(array):
        t = torch.from_numpy(array.copy())
        return t.to(dtype) if t.is_floating_point() else t.long()

    arrays = {name: tensor(array) for name, array in read_npz(cfg.data.path).items()}
    return FullBatchData(arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"), target=None)
