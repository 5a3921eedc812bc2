"""SharpnessMonitor: the top Hessian eigenvalue(s) of any LightningModule's full-batch loss, in TensorBoard.

The model is the LightningModule itself (its trainable parameters). Data: `data=(X, Y)` if given, else
`pl_module.curvature_data()`. Loss: `loss_fn(outputs, targets)` (a mean) if given, else
`pl_module.loss_fn`. Eigenvalues come from warm-started Lanczos on Hessian-vector products; the dense
Hessian is never formed. The operator is built once per fit, at its first solve. Values go through the
logger API (every logger, and trainer.callback_metrics, so ModelCheckpoint / EarlyStopping can monitor
curvature/sharpness); the custom-scalars chart is added when a TensorBoard logger is present.

Under DDP, a module whose curvature_data() is this rank's shard of the data says so with
`curvature_share() -> (rows here, rows in all)` (FullBatchModule does): each product is then taken on the
unwrapped module over the shard and summed over the ranks with one all-reduce
(shallownet.distributed.ShardedHessianOperator; never a double backward through the DDP wrapper), and
every rank runs the same warm-started solver on the same products, so all log-worthy values agree (checked
at every solve). Data passed to the monitor, or a module without curvature_share(), is taken as the whole
data set on every rank: each rank then solves on all of it.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from shallownet.callbacks.dynamics import interrupted
from shallownet.callbacks.logging import log_values
from shallownet.callbacks.tensorboard import find_writer, log_step
from shallownet.curvature import EigenResult, EigenTracker, HessianOperator
from shallownet.curvature.operators import LossFn, full_precision
from shallownet.distributed import ShardedHessianOperator

SHARPNESS = "curvature/sharpness"
STABILITY_THRESHOLD = "curvature/stability_threshold"
SHARPNESS_X_LR = "curvature/sharpness_x_lr"
HVP_COUNT = "curvature/hvp_count"
RESIDUAL = "curvature/residual"
EIGENVALUE = "curvature/eigenvalue_{}"  # 1-based, only with top_k > 1

# Anchored regexes: TensorBoard matches chart tags with re.match, and "curvature/sharpness" alone
# would also pull curvature/sharpness_x_lr into the chart.
LAYOUT = {"curvature": {"sharpness vs stability threshold 2/lr": [
    "Multiline", [f"^{SHARPNESS}$", f"^{STABILITY_THRESHOLD}$"]]}}


class SharpnessMonitor(Callback):
    """Logs the largest Hessian eigenvalue S, 2/lr, lr*S, the HVPs spent and the relative residual.

    Logged at train start, after every optimizer step whose step s = log_step(...) is a multiple of
    every_n_steps, and at train end if that step was not logged yet; every_n_steps = 0 turns it off.
    Each solve is warm-started from the previous ones and stops at relative residual <= tol or after
    max_iter HVPs. tol is raised to 1000 machine epsilons of the parameters' dtype where smaller
    (2.2e-13 in float64, 1.2e-4 in float32): below that, rounding in the HVPs decides and a float32 solve
    would only burn max_iter; the residual reached is logged either way. Steps with non-finite parameters
    are skipped. `first` / `last` hold the first and last logged values,
    `history` the (step, sharpness) pairs.
    """

    def __init__(self, every_n_steps: int = 10, tol: float = 1e-10, max_iter: int = 1000, top_k: int = 1,
                 loss_fn: LossFn | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 chunk_size: int | None = None):
        if every_n_steps < 0 or top_k < 1 or max_iter < 1 or not tol > 0:
            raise ValueError("need every_n_steps >= 0, top_k >= 1, max_iter >= 1 and tol > 0; got "
                             f"{every_n_steps}, {top_k}, {max_iter} and {tol}")
        self.every_n_steps, self.top_k, self.tol = every_n_steps, top_k, tol
        self.loss_fn, self.data, self.chunk_size = loss_fn, data, chunk_size
        self.tracker = EigenTracker(k=top_k, tol=tol, max_iter=max_iter)
        self.first: dict = {}
        self.last: dict = {}
        self.history: list[tuple[int, float]] = []
        self._operator: HessianOperator | ShardedHessianOperator | None = None
        self._logged_step: int | None = None

    # --- hooks ------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._operator = None  # one operator per fit, built at the first solve

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_steps == 0:
            return
        writer = find_writer(trainer)
        if writer is not None:
            writer.add_custom_scalars(LAYOUT)
        if trainer.global_step == 0:
            self._log(trainer, pl_module, log_step(trainer, pl_module))
        else:  # resumed: only what an unbroken run would log at this step
            self._log_if_due(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._log_if_due(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = log_step(trainer, pl_module)
        if self.every_n_steps and step != self._logged_step and not interrupted(pl_module):
            self._log(trainer, pl_module, step)

    def state_dict(self) -> dict:
        return {"first": self.first, "last": self.last, "history": self.history, "previous": self.tracker.previous}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first, self.last, self.history = state_dict["first"], state_dict["last"], state_dict["history"]
        self.tracker.previous = state_dict["previous"]
        self._logged_step = self.last.get("step")  # a resumed run does not log that step twice

    # --- measuring --------------------------------------------------------------------------------------

    def measure(self, pl_module: L.LightningModule) -> EigenResult:
        """Top-k Hessian eigenpairs at pl_module's current parameters (warm-started; logs nothing)."""
        op = self._operator_for(pl_module)
        self.tracker.tol = max(self.tol, 1000 * torch.finfo(op.dtype).eps)
        with full_precision():  # also under no_grad / inference_mode: the solver's vectors must be normal
            result = self.tracker.solve(op)
        op.release()  # no activations held between logged steps
        if isinstance(op, ShardedHessianOperator):
            op.check_agreement(result.value, result.n_hvp)
        return result

    def _operator_for(self, pl_module: L.LightningModule) -> HessianOperator | ShardedHessianOperator:
        if self._operator is None or self._operator.model is not pl_module:
            share = None
            if self.data is not None:
                data = self.data
            else:
                data = pl_module.curvature_data()
                shared = getattr(pl_module, "curvature_share", None)
                share = shared() if callable(shared) else None
            loss_fn = self.loss_fn if self.loss_fn is not None else pl_module.loss_fn
            op = HessianOperator(pl_module, loss_fn, data, chunk_size=self.chunk_size)
            self._operator = op if share is None else ShardedHessianOperator(op, *share)
        return self._operator

    def _log_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_steps == 0:
            return
        step = log_step(trainer, pl_module)
        if step % self.every_n_steps == 0 and step != self._logged_step:
            self._log(trainer, pl_module, step)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return  # a diverged run: its monitor reports that, sharpness has no meaning here
        result = self.measure(pl_module)
        if not math.isfinite(result.value):
            return
        lr = float(trainer.optimizers[0].param_groups[0].get("lr", 0.0))
        sharpness = result.value
        scalars = {SHARPNESS: sharpness, HVP_COUNT: float(result.n_hvp), RESIDUAL: result.residual}
        if lr > 0:  # gradient flow (lr 0) has no step size, hence no stability threshold
            scalars.update({STABILITY_THRESHOLD: 2.0 / lr, SHARPNESS_X_LR: lr * sharpness})
        if self.top_k > 1:
            scalars.update({EIGENVALUE.format(i): float(v) for i, v in enumerate(result.values, start=1)})
        log_values(trainer, scalars, step)
        self.last = {tag.removeprefix("curvature/"): value for tag, value in scalars.items()}
        self.last.update(step=step, hvp_count=result.n_hvp, converged=result.converged,
                         eigenvalues=[float(v) for v in result.values])
        if not self.first:
            self.first = self.last
        self.history.append((step, sharpness))
        self._logged_step = step
