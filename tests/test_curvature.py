"""The curvature toolkit against exact answers: dense-Hessian eigvalsh in float64, theory.md's closed form."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from extensions.mlp import load_digits, mlp
from shallownet import theory
from shallownet.curvature import (
    METHODS,
    EigenTracker,
    HessianOperator,
    dense_hessian,
    flat_parameters,
    hutchinson,
    lanczos,
    power_iteration,
    top_eigenvalue,
)
from shallownet.curvature.eigen import LARGEST_MAGNITUDE
from shallownet.model import ScalarLinearNet

TOL = 1e-10


def mse(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).sum(dim=-1).mean()


def half_mse(outputs, targets):
    return 0.5 * (outputs.reshape(targets.shape) - targets).square().mean()


def mlp_problem(activation="tanh", seed=0, n=23, sizes=(3, 6, 5, 2)):
    gen = torch.Generator().manual_seed(seed)
    model = mlp(sizes, activation, seed=seed)
    inputs = torch.randn(n, sizes[0], generator=gen, dtype=torch.float64)
    targets = torch.randn(n, sizes[-1], generator=gen, dtype=torch.float64)
    return model, mse, (inputs, targets)


def shallow_problem(width, seed, phi):
    """ScalarLinearNet at a random point with data (x=1, y=phi): the loss is exactly 1/2 (a.b - phi)^2."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, width, generator=gen, dtype=torch.float64)
    data = (torch.ones(1, dtype=torch.float64), torch.full((1,), phi, dtype=torch.float64))
    return ScalarLinearNet(a, b), (lambda out, y: 0.5 * ((out - y) ** 2).mean()), data


class Quadratic(nn.Module):
    """Output 1/2 w^T A w whatever the input: with loss = mean output, the Hessian is exactly A."""

    def __init__(self, eigenvalues, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
        self.register_buffer("matrix", q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
        self.w = nn.Parameter(torch.randn(len(eigenvalues), generator=gen, dtype=torch.float64))

    def forward(self, x):
        return (0.5 * self.w @ self.matrix @ self.w).expand(len(x))


def quadratic_problem(eigenvalues):
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    return Quadratic(eigenvalues), (lambda out, y: out.mean()), data


def dense_eigvalsh(model, loss_fn, data):
    return torch.linalg.eigvalsh(dense_hessian(model, loss_fn, data))


def true_residual(op, value, vector):
    """The relative residual recomputed with an HVP of our own, not the solver's word."""
    return float(torch.linalg.vector_norm(op(vector) - value * vector)) / abs(value)


class CountingHvp:
    def __init__(self, op):
        self.op, self.calls = op, 0
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    def __call__(self, v):
        self.calls += 1
        return self.op(v)


# --- eigenvalues against the dense Hessian ----------------------------------------------------------

@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue_matches_dense_eigvalsh_on_mlps(activation, method):
    model, loss_fn, data = mlp_problem(activation, seed=1)
    exact = dense_eigvalsh(model, loss_fn, data)[-1].item()
    op = CountingHvp(HessianOperator(model, loss_fn, data))
    result = top_eigenvalue(op, method=method, tol=TOL, max_iter=20000)
    assert result.converged and result.residual <= TOL
    assert result.value == pytest.approx(exact, rel=1e-8)
    assert result.n_hvp == op.calls  # every product is counted
    assert true_residual(op.op, result.value, result.vector) <= 10 * TOL


@pytest.mark.parametrize(("width", "seed", "phi"), [(1, 0, 1.0), (3, 1, 1.0), (5, 2, 0.5), (8, 3, 2.0), (4, 4, 0.0)])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_shallow_net_sharpness_matches_closed_form_and_dense(width, seed, phi, method):
    model, loss_fn, data = shallow_problem(width, seed, phi)
    state = theory.state(model.a.detach().numpy(), model.b.detach().numpy(), phi)
    assert abs(state["residual"]) > 0.1  # away from the minima
    closed_form = theory.sharpness(state["residual"], state["norm"], phi)
    dense = dense_hessian(model, loss_fn, data)
    np.testing.assert_allclose(dense.numpy(), theory.hessian(model.a.detach(), model.b.detach(), phi), atol=1e-13)
    result = top_eigenvalue(HessianOperator(model, loss_fn, data), method=method, tol=TOL, max_iter=20000)
    assert result.converged
    assert result.value == pytest.approx(closed_form, rel=1e-8)
    assert result.value == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-8)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("eigenvalues", [[-5.0, 2.0, 1.5, 0.5, -1.0, 0.1], [-3.0, -2.0, -1.0, -0.5]])
def test_largest_algebraic_not_largest_magnitude(method, eigenvalues):
    model, loss_fn, data = quadratic_problem(eigenvalues)
    assert dense_eigvalsh(model, loss_fn, data)[-1].item() == pytest.approx(max(eigenvalues), rel=1e-12)
    result = top_eigenvalue(HessianOperator(model, loss_fn, data), method=method, tol=TOL, max_iter=5000)
    assert result.converged
    assert result.value == pytest.approx(max(eigenvalues), rel=1e-8)


def test_lanczos_top_k_matches_eigvalsh():
    model, loss_fn, data = mlp_problem("tanh", seed=2, sizes=(4, 8, 6, 3))
    exact = dense_eigvalsh(model, loss_fn, data).flip(0)[:5]
    op = HessianOperator(model, loss_fn, data)
    result = lanczos(op, k=5, tol=TOL, max_basis=20)  # small basis: exercises the thick restart
    assert result.converged and (result.residuals <= TOL).all()
    np.testing.assert_allclose(result.values.numpy(), exact.numpy(), rtol=1e-8)
    np.testing.assert_allclose((result.vectors @ result.vectors.T).numpy(), np.eye(5), atol=1e-10)
    for value, vector in zip(result.values, result.vectors, strict=True):
        assert true_residual(op, float(value), vector) <= 10 * TOL


def test_unconverged_solve_says_so():
    model, loss_fn, data = mlp_problem("tanh", seed=3)
    for method in ("lanczos", "power"):
        result = top_eigenvalue(HessianOperator(model, loss_fn, data), method=method, tol=TOL, max_iter=3)
        assert not result.converged and result.n_hvp == 3 and result.residual > TOL


def test_many_restarts_below_rounding_level_stay_accurate():
    """float32 cannot reach tol 1e-12: hundreds of restarts on rounding noise must not corrupt the basis."""
    model, loss_fn, (x, y) = mlp_problem("tanh", seed=12, sizes=(3, 6, 1))  # dim 31, just above max_basis
    exact = dense_eigvalsh(model, loss_fn, (x, y))[-1].item()
    model.float()
    result = lanczos(HessianOperator(model, loss_fn, (x.float(), y.float())), tol=1e-12, max_iter=400)
    assert not result.converged and result.n_hvp == 400
    assert result.residual <= 1e-5 and result.value == pytest.approx(exact, rel=1e-5)


def test_non_finite_hessian_is_reported_not_raised():
    nan_hvp = lambda v: torch.full_like(v, float("nan"))  # noqa: E731
    result = lanczos(nan_hvp, torch.ones(4, dtype=torch.float64))
    assert not result.converged and math.isnan(result.value)


# --- Hessian-vector products -----------------------------------------------------------------------

def test_hvp_methods_agree_with_dense():
    model, loss_fn, data = mlp_problem("tanh", seed=4)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    exact = dense_hessian(model, loss_fn, data) @ v
    products = {method: HessianOperator(model, loss_fn, data, method=method)(v) for method in METHODS}
    scale = float(torch.linalg.vector_norm(exact))
    assert float(torch.linalg.vector_norm(products["forward-over-reverse"] - exact)) <= 1e-12 * scale
    assert float(torch.linalg.vector_norm(products["double-backward"] - exact)) <= 1e-12 * scale
    assert float(torch.linalg.vector_norm(products["finite-difference"] - exact)) <= 1e-6 * scale


@pytest.mark.parametrize("method", METHODS)
def test_chunks_weighted_by_size(method):
    model, loss_fn, data = mlp_problem("tanh", seed=5, n=23)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    whole = HessianOperator(model, loss_fn, data, method=method)(v)
    chunked = HessianOperator(model, loss_fn, data, method=method, chunk_size=5)(v)  # 5+5+5+5+3 rows
    scale = float(torch.linalg.vector_norm(whole))
    tolerance = 1e-12 if method != "finite-difference" else 1e-8
    assert float(torch.linalg.vector_norm(chunked - whole)) <= tolerance * scale
    # Equal weights per chunk (the common mistake) would be visibly wrong here.
    x, y = data
    naive = sum(HessianOperator(model, loss_fn, (xc, yc), method=method)(v)
                for xc, yc in zip(x.split(5), y.split(5), strict=True)) / 5
    assert float(torch.linalg.vector_norm(naive - whole)) > 1e-3 * scale


def test_gradient_is_full_batch_mean_gradient_also_chunked():
    model, loss_fn, data = mlp_problem("relu", seed=6)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(data[0]), data[1]),
                                                                      list(model.parameters()))])
    for chunk_size in (None, 4):
        got = HessianOperator(model, loss_fn, data, chunk_size=chunk_size).gradient()
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


class ManualTanh(torch.autograd.Function):
    """tanh with a backward but no jvp: forward-mode AD cannot go through it."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - y * y)


class NoForwardAdNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.outer = nn.Linear(3, 4, dtype=torch.float64), nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, x):
        return self.outer(ManualTanh.apply(self.inner(x)))


def test_falls_back_to_double_backward_once():
    torch.manual_seed(0)
    model = NoForwardAdNet()
    _, loss_fn, data = mlp_problem()
    op = HessianOperator(model, loss_fn, data, method="forward-over-reverse")
    v = torch.ones(op.dim, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="double-backward"):
        first = op(v)
    assert op.method == "double-backward"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = op(v)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    reference = torch.autograd.functional.hvp(
        lambda *ps: loss_fn(torch.func.functional_call(model, dict(zip(["inner.weight", "inner.bias", "outer.weight",
                                                                           "outer.bias"], ps, strict=True)),
                                                       (data[0],)), data[1]),
        tuple(p.detach() for p in model.parameters()), tuple(v.split([12, 4, 8, 2])[i].view_as(p)
                                                              for i, p in enumerate(model.parameters())))[1]
    torch.testing.assert_close(first, torch.cat([r.reshape(-1) for r in reference]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("training", [True, False])
def test_leaves_mode_and_grad_alone_and_runs_under_no_grad(training):
    model, loss_fn, data = mlp_problem("tanh", seed=7)
    model.train(training)
    for method in METHODS:
        op = HessianOperator(model, loss_fn, data, method=method)
        with torch.no_grad():
            top_eigenvalue(op, max_iter=5)
        with torch.inference_mode():
            op(torch.ones(op.dim, dtype=torch.float64))
            op.gradient()
    dense_hessian(model, loss_fn, data)
    assert all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_are_left_out():
    model, loss_fn, data = mlp_problem("tanh", seed=8)
    model[0].weight.requires_grad_(False)
    full = dense_hessian(model, loss_fn, data)
    op = HessianOperator(model, loss_fn, data)
    assert op.dim == full.shape[0] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    v = torch.ones(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op(v), full @ v, rtol=1e-12, atol=1e-13)


# --- warm starts, trace -----------------------------------------------------------------------------

def test_warm_start_needs_fewer_hvps():
    model, loss_fn, data = mlp_problem("tanh", seed=9, n=40, sizes=(5, 16, 16, 3))
    op = HessianOperator(model, loss_fn, data)
    tracker = EigenTracker(tol=1e-8)
    previous = tracker.solve(op)
    cold_counts, warm_counts, tracked_counts = [], [], []
    for _ in range(4):  # small GD steps
        with torch.no_grad():
            for p, g in zip(model.parameters(), op.gradient().split([p.numel() for p in model.parameters()]),
                            strict=True):
                p -= 0.05 * g.view_as(p)
        cold = top_eigenvalue(op, tol=1e-8, seed=1)
        warm = top_eigenvalue(op, previous.vector, tol=1e-8)
        tracked = tracker.solve(op)
        for result in (warm, tracked):
            assert result.converged and result.value == pytest.approx(cold.value, rel=1e-10)
        cold_counts.append(cold.n_hvp)
        warm_counts.append(warm.n_hvp)
        tracked_counts.append(tracked.n_hvp)
        previous = warm
    assert sum(warm_counts) < sum(cold_counts)
    assert sum(tracked_counts) < sum(cold_counts)


def test_hutchinson_within_its_stated_error():
    model, loss_fn, data = mlp_problem("tanh", seed=10)
    exact = torch.trace(dense_hessian(model, loss_fn, data)).item()
    estimate = hutchinson(HessianOperator(model, loss_fn, data), n_samples=200, seed=3)
    assert estimate.n_hvp == 200 and estimate.stderr > 0
    assert abs(estimate.estimate - exact) <= 4 * estimate.stderr


def test_hutchinson_exact_for_diagonal():
    class Diagonal:
        dim, dtype, device = 5, torch.float64, torch.device("cpu")
        diagonal = torch.tensor([3.0, -1.0, 0.5, 2.0, 7.0], dtype=torch.float64)

        def __call__(self, v):
            return self.diagonal * v

    estimate = hutchinson(Diagonal(), n_samples=10)
    assert estimate.estimate == pytest.approx(11.5, rel=1e-15) and estimate.stderr == 0


# --- the benchmark's model and data -----------------------------------------------------------------

def test_digits_and_mlp_builder():
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == torch.float64 and y.dtype == torch.int64
    std = x.std(dim=0)
    assert torch.allclose(x.mean(dim=0), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(std[std > 0], torch.ones_like(std[std > 0]))
    model = mlp([64, 256, 256, 10])
    assert sum(p.numel() for p in model.parameters()) == 85002
    assert all(p.dtype == torch.float64 for p in model.parameters())
    torch.testing.assert_close(mlp([64, 256, 256, 10])[0].weight, model[0].weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="activation"):
        mlp([2, 2], "gelu")
    assert F.cross_entropy(model(x), y).isfinite()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model, loss_fn, data = mlp_problem("tanh", seed=11)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    cpu_op = HessianOperator(model, loss_fn, data)
    cpu_hvp, cpu_top = cpu_op(v), top_eigenvalue(cpu_op, tol=TOL)
    model.cuda()
    cuda_op = HessianOperator(model, loss_fn, data)  # data stays on the CPU: chunks move to the model
    for method in METHODS:
        cuda_op.method = method
        hv = cuda_op(v.cuda())
        assert hv.device.type == "cuda" and hv.dtype == torch.float64
        rtol = 1e-10 if method != "finite-difference" else 1e-6
        torch.testing.assert_close(hv.cpu(), cpu_hvp, rtol=rtol, atol=rtol * float(cpu_hvp.abs().max()))
    cuda_op.method = "forward-over-reverse"
    cuda_top = top_eigenvalue(cuda_op, tol=TOL)
    assert cuda_top.vector.device.type == "cuda"
    assert cuda_top.value == pytest.approx(cpu_top.value, rel=1e-9)


def test_tracker_survives_a_repeated_solve_at_the_same_point():
    """Two solves at one point can leave the same vector twice in the warm-start block; the next solve
    must drop the duplicate rather than divide 0 by 0 (the run summary measures at logged steps too)."""
    from shallownet.model import initial_vectors

    net = ScalarLinearNet(*initial_vectors(10, seed=0))
    data = (torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    op = HessianOperator(net, half_mse, data)
    tracker = EigenTracker(tol=1e-10)
    first, again = tracker.solve(op), tracker.solve(op)
    assert again.value == pytest.approx(first.value, rel=1e-12)
    with torch.no_grad():
        net.a.mul_(1.01)
    moved = tracker.solve(op)
    a, b = net.a.detach().numpy(), net.b.detach().numpy()
    expected = theory.sharpness(float(a @ b) - 1.0, float(a @ a + b @ b), 1.0)
    assert moved.converged and moved.value == pytest.approx(expected, rel=1e-10)


def test_kept_graph_follows_the_parameters():
    """The double-backward HVP reuses its first-order graph only while the parameters are unchanged."""
    model, loss_fn, data = mlp_problem("tanh", seed=13)
    op = HessianOperator(model, loss_fn, data)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = op(v)
    torch.testing.assert_close(op(v), before, rtol=0, atol=0)  # from the kept graph
    with torch.no_grad():
        next(model.parameters()).mul_(1.1)  # an in-place update, as GD makes
    after = op(v)
    fresh = HessianOperator(model, loss_fn, data)(v)
    torch.testing.assert_close(after, fresh, rtol=1e-13, atol=1e-15)
    assert (after - before).abs().max() > 1e-6
    model.eval()  # the mode is part of the point as well (dropout, batch norm)
    assert op._kept is not None
    op.release()
    assert op._kept is None
    torch.testing.assert_close(op(v), fresh, rtol=1e-13, atol=1e-15)


def test_start_block_larger_than_the_space():
    """A warm-start block with more vectors than parameters (tracking a width-1 net: dim 2, depth 3)."""
    net = ScalarLinearNet(torch.tensor([0.7], dtype=torch.float64), torch.tensor([-1.3], dtype=torch.float64))
    op = HessianOperator(net, half_mse, (torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)))
    block = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = lanczos(op, block, tol=1e-12)
    expected = theory.sharpness(0.7 * -1.3 - 1.0, 0.7**2 + 1.3**2, 1.0)
    assert result.converged and result.n_hvp == 2 and result.value == pytest.approx(expected, rel=1e-12)


# --- repeated eigenvalues (block Lanczos) ----------------------------------------------------------

class Symmetric:
    """v -> A v with A = Q diag(spectrum) Q^T for a seeded random orthogonal Q: a known spectrum."""

    def __init__(self, spectrum, seed=0):
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=gen, dtype=torch.float64))
        self.matrix = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T
        self.dim, self.dtype, self.device = len(spectrum), torch.float64, torch.device("cpu")

    def __call__(self, v):
        return self.matrix @ v


def assert_top_k(result, op, expected):
    """Values as expected (multiplicities included), orthonormal vectors, residuals recomputed."""
    k = len(expected)
    assert result.converged and len(result.values) == k
    np.testing.assert_allclose(result.values.numpy(), expected, rtol=1e-8)
    np.testing.assert_allclose((result.vectors @ result.vectors.T).numpy(), np.eye(k), atol=1e-10)
    for value, vector in zip(result.values, result.vectors, strict=True):
        assert true_residual(op, float(value), vector) <= 10 * TOL


SPREAD = list(np.linspace(-1.0, 1.0, 20))
REPEATED = {
    "two equal on top": ([3.0, 3.0, 2.0, 1.5] + SPREAD, 2),
    "multiplicity 16 over a larger negative one": ([5.0] * 16 + [4.0] * 3 + [-6.0] * 16 + SPREAD, 3),
    "two repeated eigenvalues": ([7.0, 7.0, 3.0, 3.0, 3.0, 2.5] + SPREAD, 4),
    "a multiple of the identity": ([1.0] * 30, 5),
}


@pytest.mark.parametrize(("spectrum", "k"), REPEATED.values(), ids=REPEATED.keys())
@pytest.mark.parametrize("max_basis", [None, 12])
def test_lanczos_finds_repeated_eigenvalues(spectrum, k, max_basis):
    op = Symmetric(spectrum)
    result = lanczos(op, k=k, tol=TOL, max_basis=max_basis)  # 12: restarts with a block
    assert_top_k(result, op, sorted(spectrum, reverse=True)[:k])


def test_plain_callable_with_a_start_vector():
    """A function v -> A v is enough when v0 is given: the rest of the block is drawn like v0."""
    op = Symmetric([4.0, 4.0, 4.0, 1.0] + SPREAD, seed=1)
    result = lanczos(lambda v: op.matrix @ v, torch.ones(op.dim, dtype=torch.float64), k=3, tol=TOL)
    assert_top_k(result, op, [4.0, 4.0, 4.0])
    with pytest.raises(ValueError, match="v0"):
        lanczos(lambda v: op.matrix @ v, k=3)


def saddle_problem(width=16):
    """A depth-2 linear net at zero weights: H = [[0, C], [C^T, 0]] (per hidden unit), so every eigenvalue
    +-s of the data's cross-covariance occurs `width` times, with sign: a symmetric saddle."""
    gen = torch.Generator().manual_seed(15)
    model = nn.Sequential(nn.Linear(5, width, bias=False), nn.Linear(width, 3, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = (torch.randn(40, 5, generator=gen, dtype=torch.float64), torch.randn(40, 3, generator=gen,
                                                                                  dtype=torch.float64))
    return model, mse, data


def test_top_k_at_a_symmetric_saddle():
    model, loss_fn, data = saddle_problem()
    exact = dense_eigvalsh(model, loss_fn, data).flip(0)
    assert float(exact[15] / exact[0]) == pytest.approx(1, abs=1e-12) and float(exact[16]) < 0.9 * float(exact[0])
    torch.testing.assert_close(exact, -exact.flip(0), rtol=0, atol=1e-12)  # symmetric spectrum
    op = HessianOperator(model, loss_fn, data)
    for k in (1, 2, 3, 17):  # 17: the 16 copies of the top one, then the next eigenvalue
        assert_top_k(lanczos(op, k=k, tol=TOL), op, exact[:k].numpy())
    # Power iteration cannot separate +lambda from -lambda: it must keep saying so.
    power = top_eigenvalue(op, method="power", tol=1e-8, max_iter=300)
    assert not power.converged and power.residual > 1e-8 and power.note
    assert abs(power.value - float(exact[0])) > 1e-3 * float(exact[0])


def test_tracker_warm_starts_a_repeated_top_k():
    model, loss_fn, data = saddle_problem()
    op = CountingHvp(HessianOperator(model, loss_fn, data))
    exact = dense_eigvalsh(model, loss_fn, data).flip(0)[:3].numpy()
    tracker = EigenTracker(k=3, tol=TOL)
    cold = tracker.solve(op)
    warm = tracker.solve(op)  # from the three vectors just found: their products are all it needs
    assert_top_k(cold, op.op, exact)
    assert_top_k(warm, op.op, exact)
    assert warm.n_hvp == 3 < cold.n_hvp and op.calls == cold.n_hvp + warm.n_hvp


# --- measuring leaves the run alone ----------------------------------------------------------------

def dropout_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 2)).double()


def batchnorm_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()


def small_data(n=23, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)


def autograd_hessian(model, loss_fn, data):
    """Dense Hessian by reverse-over-reverse autograd: one forward (one dropout mask, drawn from the global
    stream), on copies of the buffers; a reference where torch.func.hessian cannot go (train-mode dropout)."""
    x, y = data
    names = list(dict(model.named_parameters()))
    shapes = [p.shape for p in model.parameters()]

    def loss(flat):
        params = dict(zip(names, (piece.view(s) for piece, s in zip(flat.split([s.numel() for s in shapes]), shapes,
                                                                      strict=True)), strict=True))
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return loss_fn(torch.func.functional_call(model, {**params, **buffers}, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat_parameters(model))


def gd_run(build, measure: bool, steps=4):
    """A plain-torch GD loop (train mode, global RNG); with `measure`, every curvature call after each step."""
    model, data = build(), small_data()
    params = list(model.parameters())
    ops = {method: HessianOperator(model, mse, data, method=method) for method in METHODS}
    tracker = EigenTracker(k=2, tol=1e-10, max_iter=60)
    torch.manual_seed(123)
    for _ in range(steps):
        grads = torch.autograd.grad(mse(model(data[0]), data[1]), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(0.1 * g)
        if measure:
            tracker.solve(ops["double-backward"])
            power_iteration(ops["forward-over-reverse"], max_iter=5)
            hutchinson(ops["finite-difference"], n_samples=3)
            ops["double-backward"].gradient()
            lanczos(ops["forward-over-reverse"], k=2, max_iter=20)
    return {name: t.clone() for name, t in model.state_dict().items()}, torch.get_rng_state()


@pytest.mark.parametrize("build", [dropout_net, batchnorm_net], ids=["dropout", "batchnorm"])
def test_measuring_does_not_change_the_run(build):
    (plain, plain_rng), (measured, measured_rng) = gd_run(build, False), gd_run(build, True)
    assert plain.keys() == measured.keys()
    for name in plain:  # parameters and buffers (running statistics, num_batches_tracked), bit for bit
        assert torch.equal(plain[name], measured[name]), name
    assert torch.equal(plain_rng, measured_rng)


def test_dropout_gives_one_fixed_symmetric_matrix():
    """With dropout in train mode all products of an operator use one mask (drawn from the stream seeded
    with op.seed): H is that mask's Hessian, symmetric, the same for every method and every call."""
    model, data = dropout_net(), small_data()
    op = HessianOperator(model, mse, data)
    rng = torch.get_rng_state()
    matrix = torch.stack([op(e) for e in torch.eye(op.dim, dtype=torch.float64)])
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(op.seed)
        reference = autograd_hessian(model, mse, data)
    torch.testing.assert_close(matrix, reference, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(matrix, matrix.T, rtol=1e-12, atol=1e-13)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(op(v), op(v))
    for method in ("forward-over-reverse", "finite-difference"):
        other = HessianOperator(model, mse, data, method=method)(v)
        tolerance = 1e-12 if method == "forward-over-reverse" else 1e-6
        assert float(torch.linalg.vector_norm(other - matrix @ v)) <= tolerance * float(torch.linalg.vector_norm(v))
    assert_top_k(lanczos(op, k=2, tol=TOL), op, torch.linalg.eigvalsh(matrix).flip(0)[:2].numpy())
    # The mask is real: another seed gives another matrix; eval mode (no dropout) the dense Hessian.
    reseeded = HessianOperator(model, mse, data, seed=1)
    assert float(torch.linalg.vector_norm(reseeded(v) - op(v))) > 1e-3 * float(torch.linalg.vector_norm(op(v)))
    model.eval()
    torch.testing.assert_close(op(v), dense_hessian(model, mse, data) @ v, rtol=1e-12, atol=1e-13)


def test_batchnorm_in_train_mode_refuses_chunks():
    model, data = batchnorm_net(), small_data()
    with pytest.raises(ValueError, match=r"BatchNorm1d '1'.*5 chunks.*chunk_size=None.*eval mode") as refused:
        HessianOperator(model, mse, data, chunk_size=5)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        HessianOperator(model, mse, DataLoader(TensorDataset(*data), batch_size=10))
    # One chunk is the full-batch loss, batch statistics and all.
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    whole = autograd_hessian(model, mse, data) @ v
    for method in METHODS:
        got = HessianOperator(model, mse, data, chunk_size=23, method=method)(v)
        tolerance = 1e-12 if method != "finite-difference" else 1e-6
        assert float(torch.linalg.vector_norm(got - whole)) <= tolerance * float(torch.linalg.vector_norm(whole))
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    # In eval mode (running statistics) chunking is exact; back in train mode the same operator refuses.
    model.eval()
    chunked = HessianOperator(model, mse, data, chunk_size=5)
    torch.testing.assert_close(chunked(v), dense_hessian(model, mse, data) @ v, rtol=1e-12, atol=1e-13)
    model.train()
    with pytest.raises(ValueError, match="batch statistics"):
        chunked(v)


def test_parameter_updates_through_data_are_seen():
    """`p.data.add_` moves no version counter: the kept graph must still not be reused (warm-tracked
    sharpness was 9.3e-4 off by step 5 with a reported residual of 5e-9)."""
    model, loss_fn, data = mlp_problem("tanh", seed=14, n=30, sizes=(4, 8, 3))
    params = list(model.parameters())
    op = HessianOperator(model, loss_fn, data)
    tracker = EigenTracker(tol=TOL)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    previous = tracker.solve(op).value
    for _ in range(5):
        versions = [p._version for p in params]
        for p, g in zip(params, torch.autograd.grad(loss_fn(model(data[0]), data[1]), params), strict=True):
            p.data.add_(g, alpha=-0.5)
        assert [p._version for p in params] == versions  # invisible to version counters
        result = tracker.solve(op)
        exact = dense_eigvalsh(model, loss_fn, data)[-1].item()
        assert abs(exact / previous - 1) > 1e-6  # the point moved
        assert result.converged and result.value == pytest.approx(exact, rel=1e-9)
        torch.testing.assert_close(op(v), dense_hessian(model, loss_fn, data) @ v, rtol=1e-12, atol=1e-13)
        previous = exact


def test_buffer_updates_are_seen():
    """BatchNorm in eval mode differentiates through its running statistics: changing them changes H."""
    model, data = batchnorm_net(), small_data()
    model.eval()
    op = HessianOperator(model, mse, data)
    v = torch.ones(op.dim, dtype=torch.float64)
    before = op(v)
    model[1].running_var.data.mul_(3.0)
    after = op(v)
    torch.testing.assert_close(after, dense_hessian(model, mse, data) @ v, rtol=1e-12, atol=1e-13)
    assert float(torch.linalg.vector_norm(after - before)) > 1e-3 * float(torch.linalg.vector_norm(before))


# --- finite differences, power iteration ------------------------------------------------------------

@pytest.mark.parametrize("module", [nn.ReLU(), nn.LeakyReLU(), nn.Hardtanh(), nn.ReLU6(), nn.MaxPool1d(2)],
                         ids=lambda m: type(m).__name__)
def test_finite_difference_refuses_non_smooth_modules(module):
    torch.manual_seed(0)
    width = 2 if isinstance(module, nn.MaxPool1d) else 4
    model = nn.Sequential(nn.Linear(3, 4), module, nn.Linear(width, 2)).double()
    data = small_data()
    with pytest.raises(ValueError, match=rf"finite-difference.*{type(module).__name__} '1'"):
        HessianOperator(model, mse, data, method="finite-difference")
    op = HessianOperator(model, mse, data)  # exact methods are fine
    v = torch.ones(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op(v), dense_hessian(model, mse, data) @ v, rtol=1e-12, atol=1e-13)
    op.method = "finite-difference"
    with pytest.raises(ValueError, match=type(module).__name__):
        op(v)


def test_power_iteration_says_when_it_returns_the_largest_magnitude():
    model, loss_fn, data = quadratic_problem([-5.0, 2.0, 1.5, 0.5, -1.0, 0.1])
    op = HessianOperator(model, loss_fn, data)
    # Out of HVPs in the first phase: the value is -5, the largest magnitude, and the result says so.
    stuck = top_eigenvalue(op, method="power", tol=1e-15, max_iter=30)
    assert not stuck.converged and stuck.note == LARGEST_MAGNITUDE and "largest-magnitude" in repr(stuck)
    assert stuck.value == pytest.approx(-5.0, rel=1e-9)
    found = top_eigenvalue(op, method="power", tol=TOL, max_iter=5000)
    assert found.converged and found.note == "" and found.value == pytest.approx(2.0, rel=1e-8)


# --- data forms, loss reduction ---------------------------------------------------------------------

class PairDataset(Dataset):
    """A map-style Dataset of (x_i, y_i) items that is not a TensorDataset."""

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]


def test_data_forms_give_the_full_batch_hessian():
    model, loss_fn, (x, y) = mlp_problem("tanh", seed=16, n=23)
    x32, y32 = x.float().numpy(), y.float().numpy()  # numpy float32: cast to the model's float64
    x, y = torch.from_numpy(x32).double(), torch.from_numpy(y32).double()
    exact = dense_hessian(model, loss_fn, (x, y))
    v = torch.randn(exact.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    forms = {
        "numpy": ((x32, y32), 5),
        "TensorDataset": (TensorDataset(x, y), 5),
        "Dataset": (PairDataset(x, y), 5),
        "Dataset, one chunk": (PairDataset(x, y), None),
        "DataLoader": (DataLoader(TensorDataset(x, y), batch_size=7), None),  # 7 + 7 + 7 + 2 rows
        "DataLoader, shuffled": (DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True), None),
    }
    rng = torch.get_rng_state()
    for name, (data, chunk_size) in forms.items():
        op = HessianOperator(model, loss_fn, data, chunk_size=chunk_size)
        for method in METHODS:
            op.method = method
            got = op(v)
            assert got.dtype == torch.float64, name
            tolerance = 1e-12 if method != "finite-difference" else 1e-7
            assert float(torch.linalg.vector_norm(got - exact @ v)) <= tolerance * float(torch.linalg.vector_norm(v)), \
                (name, method)
    assert torch.equal(torch.get_rng_state(), rng)  # the shuffled loader drew from a forked stream
    with pytest.raises(ValueError, match="DataLoader"):
        HessianOperator(model, loss_fn, DataLoader(TensorDataset(x, y), batch_size=7), chunk_size=5)
    with pytest.raises(TypeError, match="DataLoader"):
        HessianOperator(model, loss_fn, [x, y])


def sum_mse(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).sum()


@pytest.mark.parametrize(("loss_fn", "reduction"), [(mse, "mean"), (sum_mse, "sum")])
def test_loss_reduction_weights_the_chunks(loss_fn, reduction):
    model, _, (x, y) = mlp_problem("tanh", seed=17, n=23)
    exact = dense_hessian(model, loss_fn, (x, y))  # the loss over all rows in one go
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))])
    v = torch.randn(exact.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for data, chunk_size in [((x, y), 5), ((x, y), None), (DataLoader(TensorDataset(x, y), batch_size=7), None)]:
        op = HessianOperator(model, loss_fn, data, chunk_size=chunk_size, reduction=reduction)
        torch.testing.assert_close(op(v), exact @ v, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(op.gradient(), gradient, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator(model, loss_fn, (x, y), reduction="none")


# --- reprs --------------------------------------------------------------------------------------------

def test_results_have_short_reprs():
    op = Symmetric([2.0, 2.0, 1.0] + [0.5] * 400)
    for text in (repr(lanczos(op, k=3, tol=1e-8)), repr(hutchinson(op, n_samples=50))):
        assert len(text) < 200 and "tensor" not in text and "\n" not in text
    text = repr(lanczos(op, k=3, tol=1e-8))
    assert text.startswith("EigenResult(value=2,") and "converged=True" in text and "k=3" in text
    assert "n_hvp=" in text and "residual=" in text
    assert repr(hutchinson(op, n_samples=50)).startswith("TraceEstimate(estimate=")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_random_state_untouched():
    model, data = dropout_net().cuda(), small_data()
    op = HessianOperator(model, mse, data)
    v = torch.ones(op.dim, dtype=torch.float64, device="cuda")
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    first = op(v)
    lanczos(op, k=2, max_iter=20)
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), cuda)
    torch.testing.assert_close(op(v), first, rtol=1e-12, atol=1e-14)  # one mask: the same product each time
