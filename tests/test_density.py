"""Spectral density by stochastic Lanczos quadrature and per-block sharpness, against eigvalsh of dense
Hessians (a tiny transformer's) and of explicit matrices."""

from __future__ import annotations

import math

import pytest
import torch

from shallownet.curvature import (
    HessianOperator,
    block_sharpness,
    dense_hessian,
    density,
    parameter_blocks,
    top_eigenvalue,
)
from shallownet.losses import half_sum_mse
from tests.test_transformer import tiny


class Matrix:
    """An explicit symmetric matrix as an hvp."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.dim, self.dtype, self.device = matrix, len(matrix), matrix.dtype, matrix.device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v


def random_symmetric(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (a + a.T) / 2


@pytest.fixture(scope="module")
def transformer_hessian():
    model, data = tiny("learned", True)
    return model, data, dense_hessian(model, half_sum_mse, data)


def gaussian_smoothed(eigenvalues: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    kernel = torch.exp(-0.5 * ((grid[:, None] - eigenvalues[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return kernel.mean(dim=1)


def test_full_lanczos_finds_every_eigenvalue():
    matrix = random_symmetric(12, seed=0)
    estimate = density(Matrix(matrix), n_vectors=1, steps=12)
    torch.testing.assert_close(estimate.nodes[0], torch.linalg.eigvalsh(matrix), rtol=1e-10, atol=1e-10)
    assert (estimate.weights > 0).all() and estimate.weights.sum() == pytest.approx(1.0, rel=1e-12)
    assert estimate.n_hvp == 12


def test_an_invariant_krylov_space_stops_early():
    """A spectrum of 3 distinct values: Lanczos breaks down after 3 steps and the rule is the exact measure."""
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    values = torch.tensor([1.0] * 10 + [2.0] * 6 + [5.0] * 4, dtype=torch.float64)
    estimate = density(Matrix(q @ torch.diag(values) @ q.T), n_vectors=3, steps=10)
    assert estimate.n_hvp == 9 and torch.isnan(estimate.nodes[:, 3:]).all()
    torch.testing.assert_close(estimate.nodes[:, :3], torch.tensor([[1.0, 2.0, 5.0]] * 3, dtype=torch.float64),
                               rtol=1e-10, atol=1e-10)
    assert estimate.moment(1) == pytest.approx(float(values.mean()), abs=0.5)


def test_moments_within_their_stochastic_error(transformer_hessian):
    _, _, hessian = transformer_hessian
    n_vectors, dim = 40, len(hessian)
    estimate = density(Matrix(hessian), n_vectors=n_vectors, steps=20, seed=3)
    assert estimate.moment(0) == pytest.approx(1.0, rel=1e-12)
    for k in (1, 2, 3):
        power = torch.linalg.matrix_power(hessian, k)
        off_diagonal = power - torch.diag(torch.diag(power))
        stderr = math.sqrt(2 * float(off_diagonal.square().sum()) / dim ** 2 / n_vectors)  # Rademacher / sqrt(dim)
        assert abs(estimate.moment(k) - float(torch.trace(power)) / dim) <= 4 * stderr, k


def test_smoothed_density_matches_eigvalsh(transformer_hessian):
    model, data, hessian = transformer_hessian
    eigenvalues = torch.linalg.eigvalsh(hessian)
    estimate = density(HessianOperator(model, half_sum_mse, data), n_vectors=10, steps=30)
    assert estimate.n_hvp == 300
    assert estimate.high == pytest.approx(float(eigenvalues[-1]), rel=1e-8)  # the extremes converge first
    assert estimate.low == pytest.approx(float(eigenvalues[0]), rel=1e-8)
    sigma = 0.05 * float(eigenvalues[-1] - eigenvalues[0])
    grid, values = estimate.smoothed(sigma)
    step = float(grid[1] - grid[0])
    assert float(values.sum()) * step == pytest.approx(1.0, abs=1e-6)
    l1 = float((values - gaussian_smoothed(eigenvalues, grid, sigma)).abs().sum()) * step
    assert l1 < 0.05  # measured 0.008; a density of the wrong spectrum is O(1) away:
    shifted = gaussian_smoothed(eigenvalues + 3 * sigma, grid, sigma)
    assert float((values - shifted).abs().sum()) * step > 0.5


def test_block_sharpness_is_the_top_eigenvalue_of_the_dense_sub_hessian(transformer_hessian):
    model, data, hessian = transformer_hessian
    op = HessianOperator(model, half_sum_mse, data)
    blocks = parameter_blocks(model)
    assert list(blocks) == ["positions", "embed", "blocks", "norm", "out"]  # own parameters first
    assert parameter_blocks(model, depth=3)["blocks.0.attn"] == ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                                                                "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"]
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = range(start, start + p.numel())
        start += p.numel()
    sharpness = top_eigenvalue(op, tol=1e-10).value
    for prefix in ("blocks.0.attn", "blocks.0.mlp.0", "out", "positions"):
        index = torch.tensor([i for name, r in offsets.items() if name == prefix or name.startswith(prefix + ".")
                              for i in r])
        exact = float(torch.linalg.eigvalsh(hessian[index][:, index])[-1])
        result = block_sharpness(op, prefix, tol=1e-10)
        assert result.converged and len(result.vector) == len(index)
        assert result.value == pytest.approx(exact, rel=1e-8), prefix
        assert result.value <= sharpness * (1 + 1e-10)  # Cauchy interlacing
    with pytest.raises(ValueError, match="no trainable parameter is named 'blocks.0.at'"):
        block_sharpness(op, "blocks.0.at")  # a prefix of a name is not a block
