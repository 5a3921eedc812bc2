"""DeepTheoryMonitor: theory.md section 8's one-step predictions along a GD run of a deep linear chain.

Works on any LightningModule whose `model` is a linear chain: the models of extensions/deep_linear.py (they
say their layers through `matrices()` / `gradient_matrices()`), or any network whose only layers with
parameters are bias-free nn.Linear layers, applied in module order. Logs through
shallownet.callbacks.logging.log_values, so every logger gets the values and trainer.callback_metrics holds
the latest ones. Tags (a public contract; docs/deep_tags.md):

    deep_theory/pred_imbalance_fro_<l>     |D_l'|_F predicted for this step from the state one step before:
                                           D_l' = D_l + eta^2 (G_(l+1)^T G_(l+1) - G_l G_l^T)
    deep_theory/pred_imbalance_trace_<l>   tr D_l' predicted: tr D_l + eta^2 (|G_(l+1)|_F^2 - |G_l|_F^2)
    deep_theory/pred_error_imbalance_<l>   max abs entry of (predicted D_l' - measured D_l')
    scalar chains only (every layer 1 x 1, a target phi on the model or the module):
    deep_theory/gf_solution_sharpness      sharpness of the minimum gradient flow would reach from here
    deep_theory/least_sharpness            L |phi|^(2 - 2/L), the flattest minimum (constant along a run)
    deep_theory/sharpness                  top eigenvalue of the chain's Hessian here (closed form, L x L)

l = 1..L-1 is the layer pair. The step size is the optimizer's `lr` (param_groups[0]); gradient-flow
integrators report lr = 0 and get no predictions (GF conserves every D_l). Predictions are made in
on_before_optimizer_step (after the closure's backward: the gradients the step uses) at global steps k
with k % every_n_steps == 0, and compared in on_train_batch_end at step k + 1, only when exactly one
optimizer step was taken in between. The chain tags are logged at the start and at those steps k + 1.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn

from shallownet import deep_theory
from shallownet.callbacks.logging import log_values
from shallownet.registry import register_monitor

PREFIX = "deep_theory/"
MAX_DENSE_CHAIN = 512  # the chain's closed-form Hessian is L x L: beyond this the sharpness tag is left out


def chain_layers(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """([W_1, ..., W_L], [G_1, ..., G_L]) of a linear chain, detached, in float64 (G = 0 where .grad is None)."""
    if hasattr(model, "matrices") and hasattr(model, "gradient_matrices"):
        weights, grads = model.matrices(), model.gradient_matrices()
    else:
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not layers or any(m.bias is not None for m in layers):
            raise ValueError("DeepTheoryMonitor needs a linear chain: a model with matrices()/gradient_matrices(), "
                             "or bias-free nn.Linear layers only")
        weights = [m.weight for m in layers]
        grads = [torch.zeros_like(m.weight) if m.weight.grad is None else m.weight.grad for m in layers]
    return ([w.detach().to(torch.float64) for w in weights], [g.detach().to(torch.float64) for g in grads])


@register_monitor("deep_theory")
class DeepTheoryMonitor(L.Callback):
    """Logs the tags of the module docstring every `every_n_steps` GD steps (and the chain values at the
    start). `last` holds the values logged last."""

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.last: dict[str, float] = {}
        self._pending: dict | None = None  # the prediction made before a step: step, eta, D_l', tr D_l'
        self._last_step: int | None = None  # global_step at the last batch end (or at the start)

    # --- hooks -----------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        values = self._chain_values(pl_module)
        if values:
            self._log(trainer, values)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        eta = float(optimizer.param_groups[0].get("lr", 0.0))
        if not eta > 0 or trainer.global_step % self.every_n_steps != 0:
            return
        weights, grads = chain_layers(pl_module.model)
        self._pending = {
            "step": trainer.global_step,
            "eta": eta,
            "predicted": [d.cpu() for d in deep_theory.imbalance_step(weights, grads, eta)],
            "trace": deep_theory.imbalance_trace_step(weights, grads, eta),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # no step taken in this batch (one that only judged the state)
        self._last_step = step
        pending, self._pending = self._pending, None
        values = {}
        if pending is not None and step == pending["step"] + 1:  # the step the prediction was made for
            weights, _ = chain_layers(pl_module.model)
            measured = deep_theory.layer_imbalances(weights)
            for pair, (pred, meas, trace) in enumerate(zip(pending["predicted"], measured, pending["trace"],
                                                           strict=True), start=1):
                values[f"pred_imbalance_fro_{pair}"] = float(torch.linalg.matrix_norm(pred))
                values[f"pred_imbalance_trace_{pair}"] = float(trace)
                values[f"pred_error_imbalance_{pair}"] = float((pred - meas.cpu()).abs().max())
        if (step - 1) % self.every_n_steps == 0:  # the steps where predictions land (GD) or would (GF)
            values.update(self._chain_values(pl_module))
        if values:
            self._log(trainer, values)

    # --- state (for resume) ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"every_n_steps": self.every_n_steps, "last": dict(self.last), "pending": self._pending,
                "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.every_n_steps = state_dict.get("every_n_steps", self.every_n_steps)
        self.last = dict(state_dict.get("last", {}))
        self._pending = state_dict.get("pending")
        self._last_step = state_dict.get("last_step")

    # --- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _chain_values(pl_module: L.LightningModule) -> dict[str, float]:
        """The scalar-chain tags, or {} where the model is not a scalar chain with a known phi."""
        model = pl_module.model
        phi = getattr(model, "phi", getattr(pl_module, "phi", None))
        weights, _ = chain_layers(model)
        if phi is None or any(w.shape != (1, 1) for w in weights):
            return {}
        w = np.array([float(m) for m in weights])
        values = {
            "gf_solution_sharpness": float(deep_theory.chain_gf_solution_sharpness(w, phi)),
            "least_sharpness": float(deep_theory.least_sharpness(w.size, phi)),
        }
        if w.size <= MAX_DENSE_CHAIN and np.all(np.isfinite(w)):
            values["sharpness"] = deep_theory.chain_sharpness(w, phi)
        return values

    def _log(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        self.last = values
        log_values(trainer, {PREFIX + name: value for name, value in values.items()}, step=trainer.global_step)
