"""Matrix-regression data for deep linear nets: data kind `matrix_regression`.

    X in R^(n x d_in), entries N(0, 1) (or whitened: X^T X / n = I exactly, up to round-off)
    Y = X A* + noise * N(0, 1),   A* in R^(d_in x d_out) of rank r and condition number kappa:
    A* = U diag(s_1, ..., s_r) V^T with U, V Haar-random orthonormal frames and
    s_k = top_singular_value * kappa^(-(k-1)/(r-1)) (geometric from the top one down to top / kappa).

Everything is drawn in float64 from one torch.Generator seeded with `seed`, in a fixed order (U, V, X,
noise, then the test split's X and noise), and only then cast to the run's dtype: the same seed gives
the same problem in float32 and float64, on every machine.

With whiten = true and noise = 0 the loss 1/(2n) |X A - Y|_F^2 of an end-to-end map A (d_in x d_out) is
exactly 1/2 |A - A*|_F^2: deep matrix factorisation of A*.
"""

import math

import torch

from extensions.deep_kinds import data_section
from shallownet.registry import FullBatchData


def singular_values(rank: int, condition: float, top: float) -> torch.Tensor:
    """s_k = top * condition^(-(k-1)/(rank-1)), k = 1..rank (float64; one value `top` when rank is 1)."""
    if rank == 1:
        return torch.tensor([float(top)], dtype=torch.float64)
    exponents = torch.arange(rank, dtype=torch.float64) / (rank - 1)
    return top * torch.tensor(float(condition), dtype=torch.float64) ** -exponents


def orthonormalise(matrix: torch.Tensor) -> torch.Tensor:
    """Q of matrix = QR with R's diagonal made >= 0: orthonormal columns spanning the same space (Haar-random
    when the matrix is Gaussian)."""
    q, r = torch.linalg.qr(matrix)
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, torch.ones_like(signs), signs)


def orthonormal_frame(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-random (rows x cols) matrix with orthonormal columns (cols <= rows), drawn from gen in float64."""
    return orthonormalise(torch.randn(rows, cols, generator=gen, dtype=torch.float64))


def _generate(d_in: int, d_out: int, rank: int | None, condition: float, top: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rank = min(d_in, d_out) if rank is None else rank
    u, v = orthonormal_frame(d_in, rank, gen), orthonormal_frame(d_out, rank, gen)
    return gen, (u * singular_values(rank, condition, top)) @ v.T


def target_map(cfg, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A* (d_in x d_out) of a matrix_regression config (the whole run config or its data section)."""
    d = data_section(cfg)
    return _generate(d.d_in, d.d_out, d.rank, d.condition, d.top_singular_value, d.seed)[1].to(dtype)


def matrix_regression(n_samples: int, d_in: int, d_out: int, rank: int | None = None, condition: float = 10.0,
                      top_singular_value: float = 1.0, noise: float = 0.0, whiten: bool = False, n_test: int = 0,
                      seed: int = 0, dtype: torch.dtype = torch.float64):
    """(X, Y, X_test, Y_test, A*) as described in the module docstring (the test pair None when n_test = 0)."""
    gen, a_star = _generate(d_in, d_out, rank, condition, top_singular_value, seed)
    x = torch.randn(n_samples, d_in, generator=gen, dtype=torch.float64)
    if whiten:
        x = orthonormalise(x) * math.sqrt(n_samples)
    y = x @ a_star + noise * torch.randn(n_samples, d_out, generator=gen, dtype=torch.float64)
    x_test = y_test = None
    if n_test > 0:
        x_test = torch.randn(n_test, d_in, generator=gen, dtype=torch.float64)
        y_test = (x_test @ a_star + noise * torch.randn(n_test, d_out, generator=gen, dtype=torch.float64)).to(dtype)
        x_test = x_test.to(dtype)
    return x.to(dtype), y.to(dtype), x_test, y_test, a_star.to(dtype)


def load_matrix_regression(cfg, dtype) -> FullBatchData:
    """The `data:` section's problem as FullBatchData (target None: there is no scalar Phi; A* is
    target_map(cfg))."""
    d = data_section(cfg)
    x, y, x_test, y_test, _ = matrix_regression(d.n_samples, d.d_in, d.d_out, d.rank, d.condition,
                                                d.top_singular_value, d.noise, d.whiten, d.n_test, d.seed, dtype)
    return FullBatchData(x, y, x_test, y_test, target=None)
