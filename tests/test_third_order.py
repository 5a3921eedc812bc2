"""Third-order products grad_w(u^T H v) (shallownet.curvature.third_order): the shallow net's closed form at
random points, and the three methods against each other on a tiny tanh MLP."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from shallownet.curvature import HessianOperator, third_order
from shallownet.curvature.operators import DOUBLE_BACKWARD, FINITE_DIFFERENCE, FORWARD_OVER_REVERSE, METHODS
from shallownet.model import ScalarLinearNet

PHI = 1.3


def half_mse(outputs, targets):
    return 0.5 * (outputs - targets).square().mean()


def shallow_closed_form(a, b, u, v):
    """grad_(a, b) of u^T H v for L = (a.b - phi)^2 / 2, where u^T H v = (b.u_a + a.u_b)(b.v_a + a.v_b)
    + r (u_a.v_b + v_a.u_b), r = a.b - phi."""
    d = len(a)
    ua, ub, va, vb = u[:d], u[d:], v[:d], v[d:]
    su, sv, cross = b @ ua + a @ ub, b @ va + a @ vb, ua @ vb + va @ ub
    return torch.cat([sv * ub + su * vb + cross * b, sv * ua + su * va + cross * a])


@pytest.mark.parametrize("method", METHODS)
def test_shallow_net_third_order_is_the_closed_form(method):
    gen = torch.Generator().manual_seed(0)
    d = 4
    data = (torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), PHI, dtype=torch.float64))
    for _ in range(3):
        a, b = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
        op = HessianOperator(ScalarLinearNet(a, b, phi=PHI), half_mse, data)
        us = torch.randn(5, 2 * d, generator=gen, dtype=torch.float64)
        vs = torch.cat([us[:2], torch.randn(3, 2 * d, generator=gen, dtype=torch.float64)])  # u = v, then u != v
        result = third_order(op, us, vs, method=method)
        expected = torch.stack([shallow_closed_form(a, b, u, v) for u, v in zip(us, vs, strict=True)])
        # the issue's u = v form: grad_a = 2 (b.u_a + a.u_b) u_b + 2 (u_a.u_b) b, grad_b likewise
        u = us[0]
        s = b @ u[:d] + a @ u[d:]
        issue = torch.cat([2 * s * u[d:] + 2 * (u[:d] @ u[d:]) * b, 2 * s * u[:d] + 2 * (u[:d] @ u[d:]) * a])
        assert torch.allclose(expected[0], issue, rtol=1e-14, atol=1e-14)
        tolerance = 1e-6 if method == FINITE_DIFFERENCE else 1e-12
        assert torch.allclose(result.products, expected, rtol=tolerance, atol=tolerance), result.products - expected
        assert result.method == method and result.flagged == (method == FINITE_DIFFERENCE)


def test_the_three_methods_agree_on_a_tanh_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    op = HessianOperator(model, half_mse, (x, y), chunk_size=7)  # uneven chunks: the weights must be right
    us, vs = torch.randn(3, op.dim, dtype=torch.float64), torch.randn(3, op.dim, dtype=torch.float64)
    products = {m: third_order(op, us, vs, method=m).products for m in METHODS}
    scale = float(products[DOUBLE_BACKWARD].abs().max())
    assert scale > 1e-3
    assert torch.allclose(products[FORWARD_OVER_REVERSE], products[DOUBLE_BACKWARD], rtol=0, atol=1e-12 * scale)
    assert torch.allclose(products[FINITE_DIFFERENCE], products[DOUBLE_BACKWARD], rtol=0, atol=1e-6 * scale)
    # symmetry of the third derivative: swapping u and v changes nothing
    swapped = third_order(op, vs, us).products
    assert torch.allclose(swapped, products[FORWARD_OVER_REVERSE], rtol=0, atol=1e-12 * scale)
    # and the whole-batch operator gives the same as the chunked one
    whole = third_order(HessianOperator(model, half_mse, (x, y)), us, vs).products
    assert torch.allclose(whole, products[FORWARD_OVER_REVERSE], rtol=0, atol=1e-12 * scale)


def test_a_failing_method_falls_back_and_says_why(monkeypatch):
    module = importlib.import_module("shallownet.curvature.third_order")  # the package's name is the function

    def no_forward_ad(*args):
        raise NotImplementedError("no forward AD here")

    monkeypatch.setitem(module._METHODS, FORWARD_OVER_REVERSE, no_forward_ad)
    net = ScalarLinearNet(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64))
    data = (torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    u = torch.eye(4, dtype=torch.float64)[:1]
    result = module.third_order(HessianOperator(net, half_mse, data), u, u)
    assert result.method == DOUBLE_BACKWARD and "no forward AD here" in result.failures[0]
