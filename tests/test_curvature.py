"""The curvature toolkit against exact answers: dense-Hessian eigvalsh in float64, theory.md's closed form."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from extensions.mlp import load_digits, mlp
from shallownet import theory
from shallownet.curvature import (
    METHODS,
    EigenTracker,
    HessianOperator,
    dense_hessian,
    hutchinson,
    lanczos,
    top_eigenvalue,
)
from shallownet.model import ScalarLinearNet

TOL = 1e-10


def mse(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).sum(dim=-1).mean()


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
    from shallownet.model import ScalarLinearNet, initial_vectors
    from shallownet.module import half_mse

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
    assert op._kept_graph is not None
    op.release()
    assert op._kept_graph is None
    torch.testing.assert_close(op(v), fresh, rtol=1e-13, atol=1e-15)


def test_start_block_larger_than_the_space():
    """A warm-start block with more vectors than parameters (tracking a width-1 net: dim 2, depth 3)."""
    from shallownet.model import ScalarLinearNet
    from shallownet.module import half_mse

    net = ScalarLinearNet(torch.tensor([0.7], dtype=torch.float64), torch.tensor([-1.3], dtype=torch.float64))
    op = HessianOperator(net, half_mse, (torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)))
    block = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = lanczos(op, block, tol=1e-12)
    expected = theory.sharpness(0.7 * -1.3 - 1.0, 0.7**2 + 1.3**2, 1.0)
    assert result.converged and result.n_hvp == 2 and result.value == pytest.approx(expected, rel=1e-12)
