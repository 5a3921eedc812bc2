"""Third-order directional derivatives of the loss: grad_w (u^T H(w) v) for a batch of (u, v) pairs.

    result = third_order(op, us, vs)     # op: a HessianOperator; us, vs: (p, dim); result.products: (p, dim)

Three ways, tried in this order unless `method` names one (the first that runs is kept, in result.method):
    forward-over-reverse  jvp of (jvp of grad): D^3 L[u, v, .] by two forward passes over one reverse,
                          vmapped over the pairs (torch.func)
    double-backward       grad of u . (H v), H v itself a double backward with its graph kept
    finite-difference     (H(w + h v) u - H(w - h v) u) / 2h from double-backward HVPs; an approximation
                          (O(h^2) + O(eps / h)), so result.flagged is True
By the symmetry of the third derivative grad_w(u^T H v) = D^3 L[u, v, .] = d/dh H(w + h v) u, which all
three compute. Each chunk of the data weighs as in HessianOperator, on its fixed random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, jvp, vmap

from shallownet.curvature.operators import (
    DOUBLE_BACKWARD,
    FINITE_DIFFERENCE,
    FORWARD_OVER_REVERSE,
    METHODS,
    HessianOperator,
    fixed_random_stream,
    flat_parameters,
    full_precision,
)


@dataclass(frozen=True)
class ThirdOrderResult:
    products: torch.Tensor  # (p, dim): grad_w(u_i^T H v_i)
    method: str  # the method that computed them
    flagged: bool  # finite differences: approximate to O(h^2), not to round-off
    failures: tuple[str, ...] = ()  # why the methods tried before `method` failed


def third_order(op: HessianOperator, us: torch.Tensor, vs: torch.Tensor, method: str | None = None) -> ThirdOrderResult:
    """grad_w(u_i^T H(w) v_i) at the model's current parameters for each row pair (us[i], vs[i])."""
    if us.shape != vs.shape or us.dim() != 2 or us.shape[1] != op.dim:
        raise ValueError(f"us and vs must both be (pairs, {op.dim}), got {tuple(us.shape)} and {tuple(vs.shape)}")
    chain = METHODS if method is None else (method,)
    failures = []
    with full_precision():
        flat = flat_parameters(op.model)
        for name in chain:
            try:
                products = _METHODS[name](op, flat, us, vs)
            except (RuntimeError, NotImplementedError) as error:  # an op without forward AD or double backward
                if method is not None:
                    raise
                failures.append(f"{name}: {error}")
                continue
            return ThirdOrderResult(products, name, name == FINITE_DIFFERENCE, tuple(failures))
    raise ValueError("no third-order method works for this model: " + "; ".join(failures))


def _weighted_pass(op: HessianOperator, chunk_fn) -> torch.Tensor:
    """chunk_fn(x, y) -> (p, dim) summed over the chunks with HessianOperator's weights."""
    total, rows, mean = None, 0, op.reduction == "mean"
    with fixed_random_stream(op.seed, op.device):
        for x, y in op._chunks():
            part = chunk_fn(x, y) * (len(x) if mean else 1)
            total = part if total is None else total + part
            rows += len(x)
    return total / rows if mean else total


def _forward_over_reverse(op, flat, us, vs):
    def chunk(x, y):
        gradient = grad(lambda w: op._loss_at(w, x, y))

        def pair(u, v):
            return jvp(lambda w: jvp(gradient, (w,), (u,))[1], (flat,), (v,))[1]

        return vmap(pair)(us, vs)

    return _weighted_pass(op, chunk)


def _double_backward(op, flat, us, vs):
    def chunk(x, y):
        leaf = flat.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(op._loss_at(leaf, x, y), leaf, create_graph=True)
        rows = []
        for u, v in zip(us, vs, strict=True):
            (hv,) = torch.autograd.grad(gradient, leaf, grad_outputs=v, create_graph=True)
            (row,) = torch.autograd.grad(hv @ u, leaf, retain_graph=True, allow_unused=True, materialize_grads=True)
            rows.append(row)
        return torch.stack(rows)

    return _weighted_pass(op, chunk)


def _finite_difference(op, flat, us, vs):
    def hvp_at(point, u):
        return op._pass(lambda x, y: op._second_backward(*op._first_order(point, x, y), u, retain=False))

    rows = []
    for u, v in zip(us, vs, strict=True):
        v_norm = float(torch.linalg.vector_norm(v))
        if v_norm == 0.0:
            rows.append(torch.zeros_like(u))
            continue
        h = op.fd_step * max(1.0, float(torch.linalg.vector_norm(flat))) / v_norm
        rows.append((hvp_at(flat + h * v, u) - hvp_at(flat - h * v, u)) / (2 * h))
    return torch.stack(rows)


_METHODS = {FORWARD_OVER_REVERSE: _forward_over_reverse, DOUBLE_BACKWARD: _double_backward,
            FINITE_DIFFERENCE: _finite_difference}
