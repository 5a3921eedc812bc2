"""SharpnessMonitor: the top Hessian eigenvalue(s) of any LightningModule's full-batch loss, against the
stability threshold of the process that trains it.

The model is the LightningModule itself (its trainable parameters). Data: `data=(X, Y)` if given, else
`pl_module.curvature_data()`. Loss: `loss_fn(outputs, targets)` (a mean) if given, else
`pl_module.loss_fn`. Eigenvalues come from warm-started Lanczos on Hessian-vector products; the dense
Hessian is never formed. The HVP method is the one the capability probe picks (shallownet.curvature.probe:
the methods against each other and finite differences on a random direction, once per module, device and
dtype: in `refusal`, so before a run and again at train start on the run's device); where none can be
trusted the monitor refuses with the probe's one-line reason. The operator is built once per fit, at its
first solve. What the threshold is, and whether it is for the Hessian or for the preconditioned Hessian
P^-1 H, the process says
(shallownet.processes.base.process_of: the module's own process, or the view of its torch optimizer).

Under DDP, a module whose curvature_data() is this rank's shard of the data says so with
`curvature_share() -> (rows here, rows in all)` (FullBatchModule does): each product is then taken on the
unwrapped module over the shard and summed over the ranks with one all-reduce
(shallownet.curvature.distributed.ShardedHessianOperator; never a double backward through the DDP wrapper),
and every rank runs the same warm-started solver on the same products, so all log-worthy values agree
(checked at every solve). Data passed to the monitor, or a module without curvature_share(), is taken as the
whole data set on every rank: each rank then solves on all of it.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from shallownet import interrupt
from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.tensorboard import find_writer
from shallownet.curvature import EigenResult, EigenTracker, HessianOperator
from shallownet.curvature.distributed import ShardedHessianOperator
from shallownet.curvature.operators import LossFn, PreconditionedOperator, full_precision
from shallownet.curvature.probe import ProbeResult, probe_hvp
from shallownet.processes.base import process_of

SHARPNESS = "curvature/sharpness"
PRECONDITIONED_SHARPNESS = "curvature/preconditioned_sharpness"
STABILITY_THRESHOLD = "curvature/stability_threshold"
SHARPNESS_OVER_THRESHOLD = "curvature/sharpness_over_threshold"
SHARPNESS_X_LR = "curvature/sharpness_x_lr"
HVP_COUNT = "curvature/hvp_count"
RESIDUAL = "curvature/residual"
PRECONDITIONED_RESIDUAL = "curvature/preconditioned_residual"
EIGENVALUE = "curvature/eigenvalue_{}"  # 1-based, only with top_k > 1

# Anchored regexes: TensorBoard matches chart tags with re.match, and "curvature/sharpness" alone
# would also pull curvature/sharpness_x_lr into the chart.
LAYOUT = {"curvature": {"sharpness (preconditioned for adaptive processes) vs the stability threshold": [
    "Multiline", [f"^{SHARPNESS}$", f"^{PRECONDITIONED_SHARPNESS}$", f"^{STABILITY_THRESHOLD}$"]]}}


class SharpnessMonitor(PeriodicMonitor):
    """Logs the largest Hessian eigenvalue S and, for the process that trains the module:

        curvature/stability_threshold       its threshold (2/lr for GD; none for gradient flow)
        curvature/preconditioned_sharpness  lambda_max(P^-1 H) for a preconditioned process (RMSprop,
                                            Adam), with P the preconditioner of the step that produced the
                                            current parameters, so from step 1 on
        curvature/sharpness_over_threshold  the governing sharpness (S, or the preconditioned one) over the
                                            threshold: 1 is the edge of stability
        curvature/sharpness_x_lr            lr S, for a process with a step size
        curvature/hvp_count, curvature/residual (and preconditioned_residual): the HVPs spent at this step
                                            and the relative residuals reached
        curvature/eigenvalue_<i>            with top_k > 1

    Cadence: PeriodicMonitor's. Each solve is warm-started from the previous ones and stops at relative
    residual <= tol or after max_iter HVPs. tol is raised to 1000 machine epsilons of the parameters'
    dtype where smaller (2.2e-13 in float64, 1.2e-4 in float32): below that, rounding in the HVPs decides
    and a float32 solve would only burn max_iter. States with non-finite parameters are skipped.
    `history` holds the (step, S) pairs.
    """

    def __init__(self, every_n_steps: int = 10, tol: float = 1e-10, max_iter: int = 1000, top_k: int = 1,
                 loss_fn: LossFn | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 chunk_size: int | None = None):
        super().__init__(every_n_steps)
        if top_k < 1 or max_iter < 1 or not tol > 0:
            raise ValueError(f"need top_k >= 1, max_iter >= 1 and tol > 0; got {top_k}, {max_iter} and {tol}")
        self.top_k, self.tol = top_k, tol
        self.loss_fn, self.data, self.chunk_size = loss_fn, data, chunk_size
        self.tracker = EigenTracker(k=top_k, tol=tol, max_iter=max_iter)
        self.preconditioned_tracker = EigenTracker(k=1, tol=tol, max_iter=max_iter)
        self.history: list[tuple[int, float]] = []
        self._operator: HessianOperator | ShardedHessianOperator | None = None

    # --- hooks ------------------------------------------------------------------------------------------

    def refusal(self, pl_module, process) -> str | None:
        return curvature_refusal(pl_module, self.loss_fn, self.data, self.chunk_size)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._operator = None  # one operator per fit, built at the first solve

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = find_writer(trainer)
        if writer is not None:
            writer.add_custom_scalars(LAYOUT)

    def extra_state(self) -> dict:
        return {"history": self.history, "previous": self.tracker.previous,
                "preconditioned_previous": self.preconditioned_tracker.previous}

    def load_extra_state(self, state: dict) -> None:
        self.history, self.tracker.previous = state["history"], state["previous"]
        self.preconditioned_tracker.previous = state["preconditioned_previous"]

    # --- measuring --------------------------------------------------------------------------------------

    def solve(self, pl_module: L.LightningModule, preconditioner: torch.Tensor | None = None) -> EigenResult:
        """Top-k eigenpairs of the Hessian (or the top one of P^-1 H for a preconditioner P) at pl_module's
        current parameters, warm-started; logs nothing."""
        op = self._operator_for(pl_module)
        tracker = self.tracker if preconditioner is None else self.preconditioned_tracker
        tracker.tol = max(self.tol, 1000 * torch.finfo(op.dtype).eps)
        target = op if preconditioner is None else PreconditionedOperator(op, preconditioner)
        # A stop request gives the solve up between HVPs (interrupt.Stopped; PeriodicMonitor.record keeps the
        # state unmeasured, a resume measures it). Not under DDP: every rank must make the same products.
        stop = None if isinstance(op, ShardedHessianOperator) else lambda: interrupt.requested() is not None
        try:
            with full_precision():  # also under no_grad / inference_mode: the solver's vectors must be normal
                result = tracker.solve(target, stop=stop)
        finally:
            op.release()  # no activations held between logged steps
        if isinstance(op, ShardedHessianOperator):
            op.check_agreement(result.value, result.n_hvp)
        return result

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return {}  # a diverged run: its monitor reports that, sharpness has no meaning here
        result = self.solve(pl_module)
        if not math.isfinite(result.value):
            return {}
        sharpness = governing = result.value
        values = {SHARPNESS: sharpness, HVP_COUNT: float(result.n_hvp), RESIDUAL: result.residual}
        process = process_of(trainer, pl_module)
        if process.preconditioned:
            diagonal = process.preconditioner()
            governing = None
            if diagonal is not None:
                pre = self.solve(pl_module, diagonal)
                governing = pre.value
                values.update({PRECONDITIONED_SHARPNESS: pre.value, PRECONDITIONED_RESIDUAL: pre.residual,
                               HVP_COUNT: float(result.n_hvp + pre.n_hvp)})
        threshold = process.threshold()
        if threshold is not None:
            values[STABILITY_THRESHOLD] = threshold
            if governing is not None:
                values[SHARPNESS_OVER_THRESHOLD] = governing / threshold
        if process.lr is not None:
            values[SHARPNESS_X_LR] = process.lr * sharpness
        if self.top_k > 1:
            values.update({EIGENVALUE.format(i): float(v) for i, v in enumerate(result.values, start=1)})
        self.history.append((trainer.global_step, sharpness))
        return values

    def _operator_for(self, pl_module: L.LightningModule) -> HessianOperator | ShardedHessianOperator:
        if self._operator is None or self._operator.model is not pl_module:
            self._operator = curvature_operator(pl_module, self.loss_fn, self.data, self.chunk_size)
        return self._operator


# --- shared by the curvature monitors ----------------------------------------------------------------------

def curvature_refusal(pl_module: L.LightningModule, loss_fn: LossFn | None, data,
                      chunk_size: int | None = None) -> str | None:
    """Why a curvature monitor with this loss_fn and data (None: the module's) cannot measure pl_module: no
    data, no loss, or no HVP method that passes the capability probe (shallownet.curvature.probe)."""
    if data is None and not callable(getattr(pl_module, "curvature_data", None)):
        return "no data to measure on: pass data=(X, Y) or give the module a curvature_data() method"
    if loss_fn is None and not callable(getattr(pl_module, "loss_fn", None)):
        return "no loss to differentiate: pass loss_fn or give the module a loss_fn"
    return _probe(pl_module, loss_fn, data, chunk_size).refusal


def curvature_operator(pl_module: L.LightningModule, loss_fn: LossFn | None, data,
                       chunk_size: int | None) -> HessianOperator | ShardedHessianOperator:
    """The Hessian operator of pl_module's full-batch loss (data and loss_fn: given, else the module's), by
    the HVP method the capability probe chose; under DDP with a module that says its share, the sharded
    operator (see the module docstring)."""
    probe = _probe(pl_module, loss_fn, data, chunk_size)
    if probe.method is None:
        raise ValueError(probe.refusal)
    loss_fn, data, share = _resolve(pl_module, loss_fn, data)
    op = HessianOperator(pl_module, loss_fn, data, chunk_size=chunk_size, method=probe.method)
    return op if share is None else ShardedHessianOperator(op, *share)


def _resolve(pl_module, loss_fn, data):
    """(loss_fn, data, share): the given ones, else the module's; share (rows here, rows in all) or None."""
    share = None
    if data is None:
        data = pl_module.curvature_data()
        shared = getattr(pl_module, "curvature_share", None)
        share = shared() if callable(shared) else None
    return (loss_fn if loss_fn is not None else pl_module.loss_fn), data, share


def _probe(pl_module, loss_fn, data, chunk_size) -> ProbeResult:
    """The capability probe on this rank's data, once per module, device and dtype (probe_hvp's cache)."""
    loss_fn, data, _ = _resolve(pl_module, loss_fn, data)
    return probe_hvp(pl_module, loss_fn, data, chunk_size=chunk_size)
