"""DeepTheoryMonitor: theory.md section 8's one-step predictions along a GD run of a deep linear chain.

Works on any LightningModule whose `model` is a linear chain: the models of extensions/deep_linear.py (they
say their layers through `matrices()` / `gradient_matrices()`), or any network whose only layers with
parameters are bias-free nn.Linear layers, applied in module order. Logs through
shallownet.callbacks.logging.log_values, so every logger gets the values and trainer.callback_metrics holds
the latest ones. Tags (a public contract, listed in docs/tags.md):

    deep_theory/pred_imbalance_fro_<l>     |D_l'|_F predicted for this step from the state one step before:
                                           D_l' = D_l + eta^2 (G_(l+1)^T G_(l+1) - G_l G_l^T)
    deep_theory/pred_imbalance_trace_<l>   tr D_l' predicted: tr D_l + eta^2 (|G_(l+1)|_F^2 - |G_l|_F^2)
    deep_theory/pred_error_imbalance_<l>   max abs entry of (predicted D_l' - measured D_l')
    scalar chains only (every layer 1 x 1, a target phi on the model or the module):
    deep_theory/gf_solution_sharpness      sharpness of the minimum gradient flow would reach from here
    deep_theory/least_sharpness            L |phi|^(2 - 2/L), the flattest minimum (constant along a run)
    deep_theory/sharpness                  top eigenvalue of the chain's Hessian here (closed form, L x L)

l = 1..L-1 is the layer pair. Cadence and x-axis are PeriodicMonitor's. The predictions need a process with
GD's one-step identities (its lr is eta); other processes get none (gradient flow conserves every D_l).
They are made in on_before_optimizer_step (after the closure's backward: the gradients the step uses)
before each step k -> k + 1 whose end is logged, and compared there, only when exactly one optimizer step
was taken in between. The chain tags are logged at every logged step, the first state included.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn

from shallownet import deep_theory
from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.processes.base import GD_IDENTITIES, process_of

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


class DeepTheoryMonitor(PeriodicMonitor):
    """Logs the tags of the module docstring at PeriodicMonitor's cadence."""

    def __init__(self, every_n_steps: int = 1):
        super().__init__(every_n_steps)
        self._pending: dict | None = None  # the prediction made before a step: step, eta, D_l', tr D_l'

    def refusal(self, pl_module, process) -> str | None:
        try:
            chain_layers(pl_module.model)
        except (AttributeError, ValueError) as err:
            return str(err)
        return None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        step, process = trainer.global_step, process_of(trainer, pl_module)
        if process.identities != GD_IDENTITIES or (step + 1) % self.every_n_steps != 0:
            return
        weights, grads = chain_layers(pl_module.model)
        eta = process.lr
        self._pending = {
            "step": step,
            "eta": eta,
            "predicted": [d.cpu() for d in deep_theory.imbalance_step(weights, grads, eta)],
            "trace": deep_theory.imbalance_trace_step(weights, grads, eta),
        }

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        pending, self._pending = self._pending, None
        values = {}
        if pending is not None and trainer.global_step == pending["step"] + 1:  # the step it was made for
            weights, _ = chain_layers(pl_module.model)
            measured = deep_theory.layer_imbalances(weights)
            for pair, (pred, meas, trace) in enumerate(zip(pending["predicted"], measured, pending["trace"],
                                                           strict=True), start=1):
                values[f"pred_imbalance_fro_{pair}"] = float(torch.linalg.matrix_norm(pred))
                values[f"pred_imbalance_trace_{pair}"] = float(trace)
                values[f"pred_error_imbalance_{pair}"] = float((pred - meas.cpu()).abs().max())
        values.update(self._chain_values(pl_module))
        return {PREFIX + name: value for name, value in values.items()}

    def extra_state(self) -> dict:
        return {"pending": self._pending}

    def load_extra_state(self, state: dict) -> None:
        self._pending = state["pending"]

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


def build_monitor(cfg, section) -> DeepTheoryMonitor | None:
    """The registry's builder for `monitor.deep_theory` (extensions.deep_kinds)."""
    return DeepTheoryMonitor(section.every_n_steps) if section.every_n_steps else None
