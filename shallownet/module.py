"""The LightningModule that trains a model full-batch with a hand-rolled optimizer and ends itself.

Manual optimisation: each training_step first judges the current state (converged, diverged), then
takes one optimizer step through a closure (so gradient-flow integrators can re-evaluate gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from shallownet import quantities
from shallownet.model import ScalarLinearNet

CONVERGED, DIVERGED, MAX_STEPS = "converged", "diverged", "max_steps"


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1/2 mean (output - target)^2: for one point (1, phi) exactly L = 1/2 (a.b - phi)^2."""
    return 0.5 * (outputs.reshape(targets.shape) - targets).square().mean()


class FullBatchModule(L.LightningModule):
    """Full-batch training of any model; subclasses say what "converged" means.

    `make_optimizer(params)` builds the optimizer (GD, gradient flow, ...). `outcome` is one of
    converged / diverged / max_steps once training has ended.
    """

    def __init__(self, model: nn.Module, make_optimizer: Callable, loss_fn: Callable = half_mse,
                 divergence_norm: float = 1e12):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.loss_fn = loss_fn
        self.make_optimizer = make_optimizer
        self.divergence_norm = divergence_norm
        self.outcome = MAX_STEPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self):
        return self.make_optimizer(self.model.parameters())

    def curvature_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full batch, on this module's device: what the curvature monitors differentiate."""
        data = self.trainer.datamodule
        return data.x.to(self.device), data.y.to(self.device)

    def full_batch_loss(self) -> torch.Tensor:
        x, y = self.curvature_data()
        return self.loss_fn(self.model(x), y)

    def converged(self) -> bool:
        raise NotImplementedError

    def judge(self) -> str | None:
        """converged, diverged, or None to go on; used before each step and once at the end."""
        with torch.no_grad():
            params = torch.cat([p.reshape(-1) for p in self.model.parameters()])
            if not torch.isfinite(params).all() or float(params.square().sum()) > self.divergence_norm:
                return DIVERGED
        return CONVERGED if self.converged() else None

    def training_step(self, batch, batch_idx):
        verdict = self.judge()
        if verdict is not None:
            self.outcome = verdict
            self.trainer.should_stop = True
            return None
        x, y = batch
        optimizer = self.optimizers()

        def closure():
            optimizer.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            self.manual_backward(loss)
            return loss

        return optimizer.step(closure=closure)

    def on_train_end(self) -> None:
        if self.outcome == MAX_STEPS:  # the state after the last step was not judged yet
            self.outcome = self.judge() or MAX_STEPS


class ShallowNetModule(FullBatchModule):
    """Trains a ScalarLinearNet toward a.b = phi; converged when |eps| = |a.b - phi| <= tol."""

    def __init__(self, model: ScalarLinearNet, phi: float, tol: float, make_optimizer: Callable,
                 divergence_norm: float = 1e12):
        super().__init__(model, make_optimizer, half_mse, divergence_norm)
        self.phi, self.tol = phi, tol

    def state(self) -> dict[str, float]:
        return quantities.shallow_state(self.model.a, self.model.b, self.phi)

    def converged(self) -> bool:
        with torch.no_grad():
            return abs(float(quantities.residual(self.model.a, self.model.b, self.phi))) <= self.tol
