"""StabilizationMonitor: the self-stabilisation diagnostics of Damian, Nichani & Lee (ICLR 2023) along a GD run.

Tags (a contract), at the state after k steps, S and u the top Hessian eigenpair there:

    stabilization/x                 u . (theta_k - theta_dagger) = u . grad L / S: the displacement along u from
                                    the stable set (u's sign kept continuous from one measurement to the next,
                                    so the period-2 flip of GD at the edge of stability shows as a sign flip)
    stabilization/alpha             -grad L . grad S_perp at theta_dagger: the progressive sharpening rate
    stabilization/beta              |grad S_perp|^2 at theta_dagger: the self-stabilisation strength
    stabilization/delta             sqrt(2 alpha / beta), the predicted amplitude of x (only where alpha > 0)
    stabilization/sharpness         S at theta_k (the same as curvature/sharpness, to the solvers' tolerance)
    stabilization/dagger_sharpness  S at theta_dagger

theta_dagger = theta_k - x u (shallownet.curvature.stabilization: exact for a quadratic loss, first order
otherwise); alpha and beta are taken there, with the top eigenpair re-solved there, because at theta_k itself
-grad L . grad S_perp carries the cubic term's -beta x^2 / 2, the very pull that self-stabilisation is, and
would average to zero at the edge of stability. The model is moved to theta_dagger for that measurement and
restored bit for bit; forwards run on the operator's fixed random stream and copies of the buffers, so the
trajectory is the unmonitored one. Refused (before the run) for processes that do not take GD steps and for
models where no third-order method runs; one process only (no DDP).
"""

from __future__ import annotations

import math

import torch

from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.sharpness import curvature_operator, curvature_refusal
from shallownet.curvature import EigenTracker, flat_parameters, lanczos, third_order
from shallownet.curvature.distributed import ShardedHessianOperator
from shallownet.curvature.operators import LossFn, full_precision
from shallownet.curvature.stabilization import displacement, parameters_at, stabilization_terms
from shallownet.processes.base import GD_IDENTITIES

X, ALPHA, BETA, DELTA = "stabilization/x", "stabilization/alpha", "stabilization/beta", "stabilization/delta"
SHARPNESS, DAGGER_SHARPNESS = "stabilization/sharpness", "stabilization/dagger_sharpness"
DEPTH = 3  # warm starts kept for the solve at theta_dagger (as EigenTracker's depth)


class StabilizationMonitor(PeriodicMonitor):
    def __init__(self, every_n_steps: int, tol: float = 1e-10, max_iter: int = 1000, loss_fn: LossFn | None = None,
                 data: tuple[torch.Tensor, torch.Tensor] | None = None, chunk_size: int | None = None):
        super().__init__(every_n_steps)
        self.tol, self.max_iter = tol, max_iter
        self.loss_fn, self.data, self.chunk_size = loss_fn, data, chunk_size
        self.tracker = EigenTracker(k=1, tol=tol, max_iter=max_iter)
        self.dagger_previous: list[torch.Tensor] = []  # eigenvectors at the last theta_daggers, newest first
        self._operator = None

    def refusal(self, pl_module, process) -> str | None:
        if process.identities != GD_IDENTITIES:
            return (f"its theory is that of GD steps theta - lr grad L, and the process {process.method} does not "
                    "take them")
        why = curvature_refusal(pl_module, self.loss_fn, self.data, self.chunk_size)
        return why if why is not None else self._third_order_refusal(pl_module)

    def _third_order_refusal(self, pl_module) -> str | None:
        """Whether a third-order product runs on this module (its fallback chain's reasons when none does)."""
        op = curvature_operator(pl_module, self.loss_fn, self.data, self.chunk_size)
        if isinstance(op, ShardedHessianOperator):
            return "it runs in one process only (the third-order products are not sharded over DDP ranks)"
        u = torch.ones(1, op.dim, dtype=op.dtype, device=op.device) / math.sqrt(op.dim)
        try:
            third_order(op, u, u)
        except ValueError as error:
            return str(error)
        finally:
            op.release()
        return None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._operator = None

    def extra_state(self) -> dict:
        return {"previous": self.tracker.previous, "dagger_previous": self.dagger_previous}

    def load_extra_state(self, state: dict) -> None:
        self.tracker.previous, self.dagger_previous = state["previous"], state["dagger_previous"]

    def measure(self, trainer, pl_module) -> dict[str, float]:
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return {}
        op = self._operator_for(pl_module)
        self.tracker.tol = max(self.tol, 1000 * torch.finfo(op.dtype).eps)
        try:
            with full_precision():
                return self._measure(op, pl_module)
        finally:
            op.release()

    def _measure(self, op, pl_module) -> dict[str, float]:
        previous = self.tracker.previous[0][0] if self.tracker.previous else None
        here = self.tracker.solve(op)
        sharpness, u = here.value, here.vectors[0]
        if previous is not None and float(u @ previous) < 0:
            u = -u  # keep the sign continuous: x then flips sign with GD's period-2 oscillation
            self.tracker.previous[0] = -self.tracker.previous[0]
        if not (math.isfinite(sharpness) and sharpness > 0):
            return {}
        x = displacement(u, op.gradient(), sharpness)
        with parameters_at(pl_module, flat_parameters(pl_module) - x * u):
            # started from u and the last theta_daggers' eigenvectors (u alone took 25 HVPs on the digits MLP)
            start = torch.stack([u, *self.dagger_previous])
            dagger = lanczos(op, start, k=1, tol=self.tracker.tol, max_iter=self.max_iter)
            terms = stabilization_terms(op, dagger.vectors[0])
        if bool(torch.isfinite(dagger.vectors).all()):
            self.dagger_previous = [dagger.vectors[0]] + self.dagger_previous[: DEPTH - 1]
        values = {X: x, ALPHA: terms.alpha, BETA: terms.beta, SHARPNESS: sharpness, DAGGER_SHARPNESS: dagger.value}
        if terms.delta is not None:
            values[DELTA] = terms.delta
        return values

    def _operator_for(self, pl_module):
        if self._operator is None or self._operator.model is not pl_module:
            self._operator = curvature_operator(pl_module, self.loss_fn, self.data, self.chunk_size)
        return self._operator
