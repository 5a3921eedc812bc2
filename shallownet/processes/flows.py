"""The flows as processes, each integrated by adaptive Dormand-Prince 5(4) (shallownet.flow.DormandPrince).

    flow           d(theta)/dt = -grad L                                 gradient flow, the paper's foil
    modified_flow  d(theta)/dt = -grad (L + (eta/4) |grad L|^2)          Barrett & Dherin (ICLR 2021)
    central_flow   d(theta)/dt = -(grad L + 1/2 sum_ij X_ij grad(u_i^T H u_j))   Cohen et al. (ICLR 2025)

One step is one accepted integration step; the clock is the flow time reached. The flows that model GD at a
step size eta (key lr) run on GD's clock t = eta k, the x-axis compare shares: in GD steps s = t / eta the
modified flow is the paper's d(theta)/ds = -eta grad(L + (eta/4) |grad L|^2). Gradient flow conserves every
layer imbalance and has no step size, so no stability threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from shallownet.processes.base import FLOW_IDENTITIES, Process

if TYPE_CHECKING:
    import torch

    from shallownet.flow import FlowIntegrator


class GradientFlow(Process):
    method = "flow"
    identities = FLOW_IDENTITIES
    integrates = True

    def __init__(self, rtol: float, atol: float, max_step: float | None = None):
        super().__init__(rtol=rtol, atol=atol, max_step=max_step)

    @classmethod
    def viewing(cls, integrator: FlowIntegrator) -> GradientFlow:
        """The process an existing integrator (any FlowIntegrator) carries out."""
        view = cls(rtol=getattr(integrator, "rtol", math.nan), atol=getattr(integrator, "atol", math.nan),
                   max_step=getattr(integrator, "max_step", None))
        view.optimizer = integrator
        return view

    def _optimizer(self, params, max_time):
        return self._integrator(params, max_time)

    def _integrator(self, params, max_time, drift: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Dormand-Prince on d(theta)/dt = -(g + drift(g)), g = grad L (drift None: gradient flow)."""
        from shallownet.flow import DormandPrince, DriftedDormandPrince

        h = self.hyperparameters
        options = dict(rtol=h["rtol"], atol=h["atol"], max_step=h["max_step"] or math.inf,
                       t_stop=max_time if math.isfinite(max_time) else None)
        return DormandPrince(params, **options) if drift is None else DriftedDormandPrince(params, drift, **options)

    def time_per_step(self) -> None:
        return None

    def time(self, steps: int) -> float:
        return self.optimizer.t

    def work(self, steps: int) -> dict:
        return {"grad_evals": self.optimizer.grad_evals, "rejected": self.optimizer.rejected}


class ModifiedFlow(GradientFlow):
    """The modified equation of GD at step size lr to first order in lr: d(theta)/dt = -(g + (lr/2) H g).

    Each velocity is one gradient and one Hessian-vector product (double backward). On the shallow net it
    shrinks every imbalance Q_i at dQ_i/dt = -lr eps^2 Q_i (theory.md section 9), the first order of GD's
    factor 1 - lr^2 eps^2 per step; gradient flow keeps Q_i."""

    method = "modified_flow"
    identities = None
    needs_curvature = True

    def __init__(self, lr: float, rtol: float, atol: float, max_step: float | None = None):
        Process.__init__(self, lr=lr, rtol=rtol, atol=atol, max_step=max_step)
        self._operator = None

    def operator(self):
        """The run's HessianOperator, made at first use (when the data is in place)."""
        if self._operator is None:
            self._operator = self.curvature()
        return self._operator

    def _optimizer(self, params, max_time):
        return self._integrator(params, max_time, drift=lambda g: 0.5 * self.lr * self.operator()(g))

    def threshold(self) -> float:
        """2 / lr: the threshold of the GD it models."""
        return 2.0 / self.lr

    def work(self, steps: int) -> dict:
        return {**super().work(steps), "hvps": self.optimizer.grad_evals}



class CentralFlow(GradientFlow):
    """The central flow of GD at step size lr (Cohen, Damian, Talwalkar, Kolter & Lee, ICLR 2025), the time
    average of GD at the edge of stability, on GD's clock t = lr k:

        d(theta)/dt = -(g + 1/2 sum_ij X_ij beta_ij),   beta_ij = grad_w(u_i^T H u_j),

    u_1..u_m the critical eigenvectors (lr lambda_i >= 2 among the top `top_k`, from the warm-started block
    Lanczos), X >= 0 (m x m) the solution of the complementarity problem that keeps U^T H U at or below 2/lr
    (shallownet.curvature.complementarity): d(U^T H U)/dt <= -(U^T H U - 2/lr) / tau, tau = relaxation * lr,
    which is the exact central flow's d(U^T H U)/dt <= 0 on the constraint surface and pulls an eigenvalue
    that integration error (or the initialisation) left above 2/lr back at rate 1/tau. With no eigenvalue at
    2/lr, X = 0 and the velocity is gradient flow's. docs/theory.md section 11 derives it."""

    method = "central_flow"
    identities = None
    needs_curvature = True

    def __init__(self, lr: float, rtol: float, atol: float, max_step: float | None = None, top_k: int = 4,
                 relaxation: float = 1.0, eigen_tol: float = 1e-9):
        Process.__init__(self, lr=lr, rtol=rtol, atol=atol, max_step=max_step, top_k=top_k, relaxation=relaxation,
                         eigen_tol=eigen_tol)
        self._operator = None
        self._tracker = None
        self._third_method: str | None = None  # the third-order method the probe found, used from then on
        self._last: tuple[torch.Tensor, dict[str, float]] | None = None  # (point, diagnostics) of the last velocity
        self.counts = {"hvps": 0, "third_order_pairs": 0, "velocities": 0}

    def threshold(self) -> float:
        """2 / lr: the threshold of the GD it models, which the flow holds the sharpness at or below."""
        return 2.0 / self.lr

    def operator(self):
        if self._operator is None:
            self._operator = self.curvature()
        return self._operator

    def curvature_refusal(self, curvature) -> str | None:
        """Why no third-order product can be taken of this model's loss (None: one can; it is kept)."""
        import torch

        from shallownet.curvature import third_order

        op = curvature()
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(op.device, op.dtype)
        try:
            result = third_order(op, v[None], v[None])
        except ValueError as error:
            why = " ".join(str(error).split())  # one line
            return f"optim.method=central_flow takes third-order derivatives of the loss: {why}"
        self._third_method = result.method
        return None

    def _optimizer(self, params, max_time):
        h = self.hyperparameters
        return _central_integrator()(params, self._drift, rtol=h["rtol"], atol=h["atol"],
                                     max_step=h["max_step"] or math.inf,
                                     t_stop=max_time if math.isfinite(max_time) else None)

    def _drift(self, g: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """1/2 sum_ij X_ij beta_ij at the current parameters (g: the gradient there), with its diagnostics kept."""
        import numpy as np
        import torch

        from shallownet.curvature import EigenTracker, flat_parameters, third_order
        from shallownet.curvature.complementarity import central_flow_problem, pairs, solve_sdcp

        op, h = self.operator(), self.hyperparameters
        if self._tracker is None:
            self._tracker = EigenTracker(k=min(h["top_k"], op.dim), tol=h["eigen_tol"])
        eigen = self._tracker.solve(op)
        self.counts["hvps"] += eigen.n_hvp
        self.counts["velocities"] += 1
        critical = eigen.values >= 2.0 / self.lr
        m = int(critical.sum())
        drift, x_values = torch.zeros_like(g), np.zeros(0)
        if m:
            u, lam = eigen.vectors[:m], eigen.values[:m].double().cpu().numpy()
            index = pairs(m)
            left = torch.stack([u[i] for i, _ in index])
            right = torch.stack([u[j] for _, j in index])
            beta = third_order(op, left, right, method=self._third_method).products.to(g.dtype)
            self.counts["third_order_pairs"] += len(index)
            b64 = beta.double()
            A, B = central_flow_problem((b64 @ b64.T).cpu().numpy(), (b64 @ g.double()).cpu().numpy(), m)
            A -= np.diag(lam - 2.0 / self.lr) / (h["relaxation"] * self.lr)  # pull back what is above 2/lr
            X = solve_sdcp(A, B).X
            weights = torch.tensor([X[i, j] * (1 if i == j else 2) for i, j in index], dtype=g.dtype, device=g.device)
            drift = 0.5 * weights @ beta
            x_values = np.linalg.eigvalsh(X)[::-1]
        diagnostics = {"central_flow/critical_count": float(m),
                       "central_flow/eta_sharpness": self.lr * float(eigen.values[0]),
                       "central_flow/predicted_loss": float(loss) + float(x_values.sum()) / self.lr}
        diagnostics.update({f"central_flow/x_{i}": float(x_values[i]) if i < m else 0.0 for i in range(h["top_k"])})
        self._last = (flat_parameters(op.model), diagnostics)
        return drift

    def clock(self, step: int) -> dict[str, float]:
        """The central_flow/* tags at the current parameters (computed here only when no velocity was)."""
        import torch

        from shallownet.curvature import flat_parameters

        op = self.operator()
        here = flat_parameters(op.model)
        if self._last is None or not torch.equal(self._last[0], here):
            self._drift(op.gradient(), _loss(op))
        return dict(self._last[1])

    def work(self, steps: int) -> dict:
        return {**GradientFlow.work(self, steps), **self.counts}

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts.update(state.get("counts", {}))


def _loss(op) -> torch.Tensor:
    """The loss of op's model over all of op's data (mean or sum as op.reduction says), on copied buffers."""
    import torch

    from shallownet.curvature import flat_parameters

    flat, total, rows = flat_parameters(op.model), 0.0, 0
    with torch.no_grad():
        for x, y in op._chunks():
            total += float(op._loss_at(flat, x, y)) * (len(x) if op.reduction == "mean" else 1)
            rows += len(x)
    return torch.tensor(total / rows if op.reduction == "mean" else total)


def _central_integrator():
    from shallownet.flow import DriftedDormandPrince, FlowIntegrator

    class CentralDormandPrince(DriftedDormandPrince):
        """DriftedDormandPrince whose drift is also given the loss at the point (the predicted loss needs it)."""

        def _velocity(self, closure, flat):
            velocity, loss = FlowIntegrator._velocity(self, closure, flat)
            return velocity - self.drift(-velocity, loss), loss

    return CentralDormandPrince
