"""Self-stabilisation terms (Damian, Nichani & Lee, ICLR 2023, arXiv 2209.15594) at one point, any model + loss.

    terms = stabilization_terms(op, u, sharpness)   # u: top Hessian eigenvector at the model's parameters
    terms.alpha, terms.beta, terms.delta             # progressive sharpening, self-stabilisation, amplitude
    x = displacement(u, op.gradient(), sharpness)     # u . (theta - theta_dagger)

With S(theta) = lambda_max(H) and u its unit eigenvector (paper, section 4):
    grad S     = grad_theta(u^T H(theta) u), u held fixed = D^3 L[u, u, .]   (third_order: its fallback chain)
    grad S_perp = P_u^perp grad S = grad S - (u . grad S) u   (the paper's component orthogonal to u only)
    alpha = -grad L . grad S_perp   beta = |grad S_perp|^2    delta = sqrt(2 alpha / beta) where alpha > 0
At theta_dagger (on the stable set, where grad L . u = 0) -grad L . grad S_perp = -grad L . grad S, the paper's
alpha. delta is the amplitude at which the cubic term's pull on S, eta beta x^2 / 2 per step, cancels progressive
sharpening's push eta alpha: with alpha and beta held constant (the paper's
simplified dynamics) the mean of x^2 over an oscillation cycle is delta^2.

theta_dagger is the point reached from theta along u where grad L . u = 0, by one Newton step:
    x = u . grad L(theta) / S(theta),   theta_dagger = theta - x u.
Exact for a quadratic loss (grad L = H (theta - theta*)); for other losses it is the first-order projection,
its error O(x^2). It leaves the component along grad S_perp alone (that is the sharpness' own deviation from
2/eta, which a measurement at one point cannot separate from the stable set's drift).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from shallownet.curvature.operators import HessianOperator, trainable_parameters
from shallownet.curvature.third_order import third_order


@dataclass(frozen=True)
class StabilizationTerms:
    grad_sharpness: torch.Tensor  # grad S = grad(u^T H u), u fixed
    grad_sharpness_perp: torch.Tensor  # its component orthogonal to u
    alpha: float  # -grad L . grad S_perp: the progressive sharpening rate
    beta: float  # |grad S_perp|^2: the self-stabilisation strength
    method: str  # the third-order method that computed grad S
    flagged: bool  # grad S by finite differences (approximate)

    @property
    def delta(self) -> float | None:
        """sqrt(2 alpha / beta), the predicted oscillation amplitude; None unless alpha > 0 and beta > 0."""
        return math.sqrt(2 * self.alpha / self.beta) if self.alpha > 0 and self.beta > 0 else None


def stabilization_terms(op: HessianOperator, u: torch.Tensor, gradient: torch.Tensor | None = None,
                        method: str | None = None) -> StabilizationTerms:
    """alpha, beta and grad S at the model's current parameters, u the unit top eigenvector there
    (gradient: grad L there, computed when not given)."""
    u = u / torch.linalg.vector_norm(u)
    result = third_order(op, u[None], u[None], method=method)
    grad_s = result.products[0]
    perp = grad_s - (u @ grad_s) * u
    gradient = op.gradient() if gradient is None else gradient
    return StabilizationTerms(grad_s, perp, -float(gradient @ perp), float(perp @ perp), result.method,
                              result.flagged)


def displacement(u: torch.Tensor, gradient: torch.Tensor, sharpness: float) -> float:
    """x = u . (theta - theta_dagger) = u . grad L / S: the Newton step along u onto grad L . u = 0."""
    return float(u @ gradient) / sharpness


@contextmanager
def parameters_at(model: nn.Module, flat: torch.Tensor) -> Iterator[None]:
    """The model's trainable parameters set to `flat` inside, and restored bit for bit on exit (also on error),
    so a measurement taken at another point leaves the trajectory exactly as it was."""
    params = list(trainable_parameters(model).values())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, piece in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.copy_(piece.view_as(p))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
