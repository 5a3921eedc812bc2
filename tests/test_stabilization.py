"""Self-stabilisation terms (shallownet.curvature.stabilization) and StabilizationMonitor: grad S against the
shallow net's closed form and against finite differences of a dense Hessian's top eigenvalue (shallow net,
a digits MLP), x exact on a quadratic, and the monitor in real runs (trajectory untouched, refusals)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.autograd.functional import hessian
from torch.func import functional_call

from shallownet.callbacks.stabilization import ALPHA, BETA, DAGGER_SHARPNESS, DELTA, X
from shallownet.config import RunConfig, load_config
from shallownet.curvature import HessianOperator, flat_parameters, trainable_parameters
from shallownet.curvature.stabilization import displacement, parameters_at, stabilization_terms
from shallownet.model import ScalarLinearNet
from shallownet.training import build, fit

PHI = 1.3


def half_mse(outputs, targets):
    return 0.5 * (outputs - targets).square().mean()


def loss_of_flat(model, loss_fn, x, y):
    """L(theta) on flat parameters (in flat_parameters order), for torch.autograd.functional.hessian."""
    shapes = {name: p.shape for name, p in trainable_parameters(model).items()}

    def loss(flat):
        pieces = flat.split([s.numel() for s in shapes.values()])
        named = {n: piece.view(s) for (n, s), piece in zip(shapes.items(), pieces, strict=True)}
        return loss_fn(functional_call(model, named, (x,)), y)

    return loss


def dense_top(loss, flat):
    """(lambda_max, u) of the dense Hessian at flat."""
    values, vectors = torch.linalg.eigh(hessian(loss, flat))
    return float(values[-1]), vectors[:, -1]


def shallow(d, gen):
    a, b = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    data = (torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), PHI, dtype=torch.float64))
    return a, b, ScalarLinearNet(a, b, phi=PHI), data


def test_shallow_net_grad_s_alpha_beta_are_the_closed_form_and_finite_differences_of_lambda_max():
    gen = torch.Generator().manual_seed(1)
    d = 3
    for _ in range(3):
        a, b, net, (x, y) = shallow(d, gen)
        loss = loss_of_flat(net, half_mse, x, y)
        flat = flat_parameters(net)
        r = float(a @ b) - PHI
        eye = torch.eye(d, dtype=torch.float64)
        closed_h = torch.cat([torch.cat([torch.outer(b, b), r * eye + torch.outer(b, a)], 1),
                              torch.cat([r * eye + torch.outer(a, b), torch.outer(a, a)], 1)])
        assert torch.allclose(hessian(loss, flat), closed_h, rtol=0, atol=1e-14)  # H in the (a, b) blocks
        top, u = dense_top(loss, flat)
        terms = stabilization_terms(HessianOperator(net, half_mse, (x, y)), u)
        ua, ub = u[:d], u[d:]
        s = b @ ua + a @ ub
        closed = torch.cat([2 * s * ub + 2 * (ua @ ub) * b, 2 * s * ua + 2 * (ua @ ub) * a])
        assert torch.allclose(terms.grad_sharpness, closed, rtol=0, atol=1e-13)
        # grad lambda_max by central differences of the dense top eigenvalue, coordinate by coordinate
        h = 1e-6
        fd = torch.tensor([(dense_top(loss, flat + h * e)[0] - dense_top(loss, flat - h * e)[0]) / (2 * h)
                           for e in torch.eye(2 * d, dtype=torch.float64)], dtype=torch.float64)
        assert torch.allclose(terms.grad_sharpness, fd, rtol=0, atol=1e-8 * max(1.0, top))
        gradient = torch.cat([r * b, r * a])  # grad L = r (b; a)
        perp = fd - (u @ fd) * u
        assert terms.alpha == pytest.approx(-float(gradient @ perp), rel=1e-7, abs=1e-9)
        assert terms.beta == pytest.approx(float(perp @ perp), rel=1e-7)
        assert abs(float(terms.grad_sharpness_perp @ u)) < 1e-13
        if terms.alpha > 0:
            assert terms.delta == pytest.approx((2 * terms.alpha / terms.beta) ** 0.5, rel=1e-15)
        else:
            assert terms.delta is None


def test_digits_mlp_grad_s_is_the_derivative_of_the_dense_top_eigenvalue():
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data[:40] / 16.0, dtype=torch.float64)
    y = nn.functional.one_hot(torch.tensor(digits.target[:40]), 10).double()
    model = nn.Sequential(nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 10)).double()  # 385 parameters
    loss = loss_of_flat(model, half_mse, x, y)
    flat = flat_parameters(model)
    top, u = dense_top(loss, flat)
    terms = stabilization_terms(HessianOperator(model, half_mse, (x, y), chunk_size=15), u)
    gen = torch.Generator().manual_seed(3)
    h = 1e-5
    for _ in range(3):  # directional derivatives d/dh lambda_max(theta + h v) = grad S . v
        v = torch.randn(len(flat), generator=gen, dtype=torch.float64)
        v /= torch.linalg.vector_norm(v)
        fd = (dense_top(loss, flat + h * v)[0] - dense_top(loss, flat - h * v)[0]) / (2 * h)
        assert float(terms.grad_sharpness @ v) == pytest.approx(fd, rel=1e-6, abs=1e-9 * top)
    assert float(torch.linalg.vector_norm(terms.grad_sharpness)) > 1e-3  # the checks above are not of zeros


def test_x_is_the_exact_displacement_from_the_stable_set_on_a_quadratic():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    op = HessianOperator(model, half_mse, (x, y))
    loss = loss_of_flat(model, half_mse, x, y)
    top, u = dense_top(loss, flat_parameters(model))
    design = torch.cat([x, torch.ones(20, 1, dtype=torch.float64)], 1)
    minimum = torch.linalg.lstsq(design, y).solution.flatten()  # weight (3) then bias, flat_parameters order
    moved = flat_parameters(model)
    shift = displacement(u, op.gradient(), top)
    assert shift == pytest.approx(float(u @ (moved - minimum)), rel=1e-12)
    with parameters_at(model, moved - shift * u):
        assert abs(float(u @ op.gradient())) < 1e-13  # theta_dagger is on the stable set: grad L . u = 0
        assert not torch.equal(flat_parameters(model), moved)
    assert torch.equal(flat_parameters(model), moved)  # restored bit for bit


def run_config(*overrides):
    return load_config(RunConfig, None, ["monitor.sharpness.every_n_steps=0", "train.tol=1e-300",
                                         "train.dtype=float64", "model.width=3", "optim.lr=0.3", *overrides])


def test_the_monitor_logs_its_tags_and_leaves_the_trajectory_alone():
    plain = build(run_config("train.max_steps=9"))
    fit(plain.module, plain.datamodule, max_steps=9, callbacks=plain.callbacks)
    watched = build(run_config("train.max_steps=9", "monitor.stabilization.every_n_steps=3"))
    fit(watched.module, watched.datamodule, max_steps=9, callbacks=watched.callbacks)
    for ours, theirs in zip(watched.module.parameters(), plain.module.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    monitor = watched.monitors["stabilization"]
    assert monitor.last_step == 9 and {X, ALPHA, BETA, DAGGER_SHARPNESS} <= set(monitor.last)
    # at the end, the monitor's x is u . grad L / S of the dense Hessian at the final parameters
    module = watched.module
    xs, ys = module.curvature_data()
    loss = loss_of_flat(module, module.loss_fn, xs, ys)
    flat = flat_parameters(module)
    top, u = dense_top(loss, flat)
    gradient = torch.func.grad(loss)(flat)
    assert abs(monitor.last[X]) == pytest.approx(abs(float(u @ gradient)) / top, rel=1e-8, abs=1e-15)
    if DELTA in monitor.last:
        assert monitor.last[DELTA] == pytest.approx((2 * monitor.last[ALPHA] / monitor.last[BETA]) ** 0.5)


@pytest.mark.parametrize("overrides", [("optim.method=momentum", "optim.momentum=0.9"), ("optim.method=flow",)])
def test_a_process_that_is_not_gd_is_refused_before_the_run(cli, overrides):
    code, _, err, dirs = cli("train", "monitor.stabilization.every_n_steps=1", *overrides)
    assert code == 2 and dirs == []
    assert "monitor.stabilization.every_n_steps" in err and "GD steps" in err
    assert len(err.strip().splitlines()) == 1


def test_no_working_third_order_method_is_refused_before_the_run(cli, monkeypatch):
    from shallownet.callbacks import stabilization

    def none_works(*args, **kwargs):
        raise ValueError("no third-order method works for this model: forward-over-reverse: no forward AD")

    monkeypatch.setattr(stabilization, "third_order", none_works)
    code, _, err, dirs = cli("train", "monitor.stabilization.every_n_steps=1")
    assert code == 2 and dirs == []
    assert "no third-order method works" in err and len(err.strip().splitlines()) == 1


def test_bad_keys_are_refused(cli):
    for key, value in (("every_n_steps", "-1"), ("tol", "0"), ("max_iter", "0")):
        code, _, err, dirs = cli("train", f"monitor.stabilization.{key}={value}")
        assert code == 2 and dirs == [] and f"monitor.stabilization.{key}" in err
