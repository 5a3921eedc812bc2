"""The flows that model GD at a step size (shallownet.processes.flows): the modified flow against its
closed form on a quadratic and its exact imbalance law on the shallow net, and its distance to GD."""

from __future__ import annotations

import torch
from torch import nn

from shallownet.config import RunConfig, load_config
from shallownet.curvature import HessianOperator
from shallownet.model import ScalarLinearNet
from shallownet.processes.flows import ModifiedFlow
from shallownet.training import build, fit


def half_mse(outputs, targets):
    return 0.5 * (outputs - targets).square().mean()


def drive(process, model, loss_fn, data, t_end: float, max_steps: int = 20_000):
    """Step the process's integrator over `model` until its clock reaches t_end."""
    optimizer = process.make_optimizer(model.parameters(), max_time=t_end,
                                       curvature=lambda: HessianOperator(model, loss_fn, data))

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(data[0]), data[1])
        loss.backward()
        return loss

    for _ in range(max_steps):
        if process.time(0) >= t_end:
            return optimizer, closure
        optimizer.step(closure)
    raise AssertionError(f"t = {process.time(0)} < {t_end} after {max_steps} steps")


def test_modified_flow_on_a_quadratic_is_its_closed_form():
    """L = |X w - y|^2 / 2N: e = w - w* follows de/dt = -(A + lr/2 A^2) e with A = X^T X / N."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(20, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
    w0 = model.weight.detach().reshape(-1).clone()
    lr, t_end = 0.7, 2.5
    drive(ModifiedFlow(lr=lr, rtol=1e-11, atol=1e-13), model, half_mse, (x, y), t_end)
    a = x.T @ x / len(x)
    w_star = torch.linalg.solve(a, x.T @ y[:, 0] / len(x))
    expected = w_star + torch.linalg.matrix_exp(-(a + lr / 2 * a @ a) * t_end) @ (w0 - w_star)
    gradient_flow = w_star + torch.linalg.matrix_exp(-a * t_end) @ (w0 - w_star)
    found = model.weight.detach().reshape(-1)
    assert torch.allclose(found, expected, rtol=0, atol=1e-9), (found - expected)
    assert float((found - gradient_flow).norm()) > 1e-2  # the lr term moved it: the check is not vacuous


def velocity_at(process, net: ScalarLinearNet) -> torch.Tensor:
    """The process's d(theta)/dt at the net's parameters, from its integrator (data: the point x = 1, y = 1)."""
    data = (torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    optimizer = process.make_optimizer(net.parameters(), curvature=lambda: HessianOperator(net, half_mse, data))

    def closure():
        optimizer.zero_grad()
        loss = half_mse(net(data[0]), data[1])
        loss.backward()
        return loss

    with torch.no_grad():
        return optimizer._velocity(closure, torch.cat([net.a, net.b]))[0]


def test_modified_flow_shrinks_each_imbalance_at_lr_eps_squared():
    """On the shallow net d(Q_i)/dt = -lr eps^2 Q_i exactly (dQ_i/ds = -lr^2 eps^2 Q_i in GD steps s = t/lr),
    at random points; gradient flow's velocity keeps Q_i."""
    gen = torch.Generator().manual_seed(1)
    lr = 0.3
    for _ in range(5):
        a0, b0 = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
        velocity = velocity_at(ModifiedFlow(lr=lr, rtol=1e-10, atol=1e-12), ScalarLinearNet(a0, b0, phi=1.0))
        da, db = velocity[:4], velocity[4:]
        eps = float(a0 @ b0 - 1.0)
        dq = 2 * a0 * da - 2 * b0 * db
        q = a0.square() - b0.square()
        assert torch.allclose(dq, -lr * eps**2 * q, rtol=1e-12, atol=1e-14), (dq, -lr * eps**2 * q)


def final_parameters(method: str, lr: float, steps: int) -> torch.Tensor:
    """The shallow net (width 5, lam0 = 4.5, Q0 = 0.8 lam0) after `steps` GD steps, or a flow at time lr steps."""
    keys = [f"optim.method={method}", "monitor.sharpness.every_n_steps=0", "model.width=5", "train.dtype=float64",
            "model.init.scheme=imbalanced", "model.init.scale=1.5", "model.init.imbalance=0.8", "train.tol=1e-300"]
    keys += [f"optim.lr={lr}"] if method != "flow" else []
    keys += [f"train.max_steps={steps}"] if method == "gd" else [f"train.max_time={lr * steps}",
                                                                "train.max_steps=100000"]
    pieces = build(load_config(RunConfig, None, keys))
    fit(pieces.module, pieces.datamodule, max_steps=steps if method == "gd" else 100_000)
    return torch.cat([p.detach().reshape(-1) for p in pieces.module.model.parameters()])


def test_modified_flow_is_closer_to_gd_than_gradient_flow_is():
    """Measured (lr 0.1, 20 GD steps): |modified - GD| = 0.0200, |GF - GD| = 0.0572, a ratio of 0.35."""
    gd = final_parameters("gd", 0.1, 20)
    modified = float((final_parameters("modified_flow", 0.1, 20) - gd).norm())
    gradient_flow = float((final_parameters("flow", 0.1, 20) - gd).norm())
    assert modified < 0.5 * gradient_flow, (modified, gradient_flow)
