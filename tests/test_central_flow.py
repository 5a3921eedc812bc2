"""The central flow (shallownet.processes.flows.CentralFlow) and its complementarity solve
(shallownet.curvature.complementarity): the k = 1 closed form, the k >= 2 solver against KKT and a brute-force
minimiser, gradient flow below the threshold, and the shallow net's exact limit Q_inf (docs/theory.md
section 11), all in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from shallownet.curvature import HessianOperator
from shallownet.curvature.complementarity import apply, central_flow_problem, kkt_residual, pairs, solve_sdcp
from shallownet.model import ScalarLinearNet
from shallownet.processes.flows import CentralFlow, GradientFlow
from tests.test_third_order import shallow_closed_form

PHI = 1.0
DATA = (torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), PHI, dtype=torch.float64))


def half_mse(outputs, targets):
    return 0.5 * (outputs - targets).square().mean()


def random_problem(rng, k: int, dim: int, rank: int | None = None):
    """A and B of central_flow_problem from random beta_ij (rank: how many independent ones) and g."""
    m = len(pairs(k))
    beta = rng.standard_normal((rank or m, dim))
    beta = (rng.standard_normal((m, rank)) @ beta) if rank else beta
    g = rng.standard_normal(dim)
    return central_flow_problem(beta @ beta.T, beta @ g, k)


def objective(A, B, X):
    return 0.5 * np.sum(X * apply(B, X)) + np.sum(A * X)


def test_k1_solve_is_max_of_zero_and_minus_a_over_b():
    """At random shallow-net points with u the top eigenvector: X = max(0, -A/B), A = beta . g, B = |beta|^2/2."""
    gen = torch.Generator().manual_seed(3)
    signs = set()
    for _ in range(8):
        a, b = torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
        u = torch.linalg.eigh(torch.autograd.functional.hessian(
            lambda w: 0.5 * (w[:3] @ w[3:] - PHI) ** 2, torch.cat([a, b])))[1][:, -1]
        beta = shallow_closed_form(a, b, u, u)
        g = (a @ b - PHI) * torch.cat([b, a])
        A, B = float(beta @ g), float(beta @ beta) / 2
        pa, pb = central_flow_problem(np.array([[float(beta @ beta)]]), np.array([float(beta @ g)]), 1)
        solution = solve_sdcp(pa, pb)
        assert solution.X[0, 0] == pytest.approx(max(0.0, -A / B), rel=1e-14, abs=1e-300)
        signs.add(A < 0)
    assert signs == {True, False}  # both branches of the max were taken


@pytest.mark.parametrize("k", [2, 3])
def test_solver_meets_kkt_and_the_brute_force_minimum(k):
    """Random instances: X >= 0, Z = A + B(X) >= 0, <X, Z> = 0 to 1e-9, and no lower objective from a
    scipy minimiser over X = L L^T from several starts."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(k)
    active = 0
    for _ in range(12):
        A, B = random_problem(rng, k, dim=10)
        solution = solve_sdcp(A, B)
        X = solution.X
        Z = A + apply(B, X)
        assert np.linalg.eigvalsh(X)[0] >= -1e-12 and np.linalg.eigvalsh(Z)[0] >= -1e-9
        assert abs(np.sum(X * Z)) <= 1e-9 and solution.kkt_residual <= 1e-9
        lower = np.tril_indices(k)

        def f(theta, A=A, B=B, lower=lower):
            L = np.zeros((k, k))
            L[lower] = theta
            return objective(A, B, L @ L.T)

        best = min(minimize(f, rng.standard_normal(len(lower[0])), method="BFGS", options={"gtol": 1e-12}).fun
                   for _ in range(5))
        assert objective(A, B, X) <= best + 1e-9
        assert objective(A, B, X) >= best - 1e-6 * (1 + abs(best))  # the brute force finds the same minimum
        active += np.linalg.matrix_rank(X, tol=1e-8) not in (0, k)
    assert active  # some instances end on a proper face of the cone (rank strictly between 0 and k)


def test_singular_b_returns_the_least_norm_solution():
    """beta_11 = beta_22 = v, beta_12 = 0: only X_11 + X_22 matters; the least-norm minimiser splits it evenly."""
    v, g = np.array([1.0, 2.0, -1.0]), np.array([-0.5, -1.0, 0.2])
    beta = np.stack([v, np.zeros(3), v])  # pairs (0, 0), (0, 1), (1, 1)
    A, B = central_flow_problem(beta @ beta.T, beta @ g, 2)
    solution = solve_sdcp(A, B)
    c = -2 * float(v @ g) / float(v @ v)  # X_11 + X_22 = c puts beta . velocity at 0
    assert solution.singular
    assert np.allclose(solution.X, np.diag([c / 2, c / 2]), atol=1e-10), solution.X
    assert kkt_residual(A, B, solution.X) <= 1e-10


def drive(process, model, t_end: float, max_steps: int = 50_000, every=None):
    """Step the process's integrator over the shallow net until its clock reaches t_end."""
    optimizer = process.make_optimizer(model.parameters(), max_time=t_end,
                                       curvature=lambda: HessianOperator(model, half_mse, DATA))

    def closure():
        optimizer.zero_grad()
        loss = half_mse(model(DATA[0]), DATA[1])
        loss.backward()
        return loss

    for step in range(max_steps):
        if optimizer.t >= t_end:
            return step
        optimizer.step(closure)
        if every is not None:
            every(process)
    raise AssertionError(f"t = {optimizer.t} < {t_end} after {max_steps} steps")


def test_central_flow_is_gradient_flow_while_eta_s_is_below_2():
    """lam_GF = sqrt(4 phi^2 + Q0^2) stays below 2/eta from this start (and S <= lam), so X = 0 throughout."""
    gen = torch.Generator().manual_seed(0)
    a0, b0 = 0.8 * torch.randn(3, generator=gen, dtype=torch.float64), 0.5 * torch.randn(3, generator=gen,
                                                                                          dtype=torch.float64)
    eta, t_end = 0.3, 3.0
    central, flow = ScalarLinearNet(a0, b0, phi=PHI), ScalarLinearNet(a0, b0, phi=PHI)
    seen = []
    drive(CentralFlow(lr=eta, rtol=1e-10, atol=1e-12), central, t_end,
          every=lambda p: seen.append(p.clock(0)["central_flow/eta_sharpness"]))
    drive(GradientFlow(rtol=1e-10, atol=1e-12), flow, t_end)
    assert max(seen) < 2 and max(seen) > 0.5  # below the threshold, but not trivially
    found, expected = torch.cat([central.a, central.b]), torch.cat([flow.a, flow.b])
    assert torch.allclose(found, expected, rtol=0, atol=1e-13), found - expected


def test_width_one_net_slides_along_two_over_eta_to_q_inf():
    """Phi = 1, (a0, b0) = (2, 0), eta = 0.46: gradient flow would end at lam = sqrt(4 + 16) = 4.47 > 2/eta;
    the central flow becomes critical, then slides along S = 2/eta to ab = Phi, a^2 + b^2 = 2/eta, so
    Q_inf = a^2 - b^2 = sqrt((2/eta)^2 - 4 Phi^2) = 3.8605 (docs/theory.md section 11)."""
    eta = 0.46
    net = ScalarLinearNet(torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64), phi=PHI)
    process = CentralFlow(lr=eta, rtol=1e-10, atol=1e-12, top_k=1)
    log = []
    drive(process, net, t_end=25.0, every=lambda p: log.append(p.clock(0)))
    a, b = float(net.a.detach()), float(net.b.detach())
    q_inf = math.sqrt((2 / eta) ** 2 - 4 * PHI**2)
    assert q_inf == pytest.approx(3.8605, abs=5e-5)
    assert a * b == pytest.approx(PHI, abs=1e-8)
    assert a * a + b * b == pytest.approx(2 / eta, rel=1e-8)
    assert a * a - b * b == pytest.approx(q_inf, rel=1e-8)
    counts = [entry["central_flow/critical_count"] for entry in log]
    first = counts.index(1.0)
    assert first > 10  # gradient flow first (X = 0), until eta S reaches 2
    assert all(entry["central_flow/x_0"] == 0 for entry in log[:first])
    # then it slides: eta S held at 2 (measured: within -2e-11 / +9e-9) while X > 0 keeps it there
    assert all(abs(entry["central_flow/eta_sharpness"] - 2) <= 1e-7 for entry in log[first:])
    assert max(entry["central_flow/x_0"] for entry in log) > 0.01


class Attention(nn.Module):
    """One float32 attention layer through F.scaled_dot_product_attention (CPU flash kernel: no forward AD,
    no double backward)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        h = self.proj(x.view(-1, 1, 2, 4))  # (batch, heads, length, features): 4-D takes the flash kernel
        return F.scaled_dot_product_attention(h, h, h).reshape(len(x), -1)


def test_refuses_a_model_without_third_order_derivatives():
    torch.manual_seed(0)
    model = Attention()
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    why = CentralFlow(lr=0.1, rtol=1e-8, atol=1e-10).curvature_refusal(lambda: HessianOperator(model, half_mse, (x, y)))
    assert why is not None and why.startswith("optim.method=central_flow takes third-order derivatives")
    assert "\n" not in why
    shallow = ScalarLinearNet(torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), phi=PHI)
    assert CentralFlow(lr=0.1, rtol=1e-8, atol=1e-10).curvature_refusal(
        lambda: HessianOperator(shallow, half_mse, DATA)) is None
