"""The LightningModule that trains any model full-batch with a hand-rolled optimizer and ends itself.

Manual optimisation. Each training_step judges the current state with the run's StopRule (converged,
diverged, a budget, an interruption) and, if the run goes on, takes one optimizer step: GD (its gradient
is computed first, chunked, and also serves the judgement) or a gradient-flow integrator (which calls the
closure as often as its stages need). The data set lives on the module's device, placed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning as L
import torch
from torch import nn

from shallownet import interrupt
from shallownet.flow import FlowIntegrator
from shallownet.registry import FullBatchData
from shallownet.stop import StopRule


@contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Forwards that measure and do not train: the random streams and every buffer (BatchNorm running
    statistics) are left as they were, so a monitored run ends bit-identical to an unmonitored one."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)


class FullBatchModule(L.LightningModule):
    """Full-batch training of `model` on the data of the trainer's FullBatchDataModule (or `use_data`).

    convergence: what `rule.tol` bounds: "residual" (|eps| from the model's quantities()), "loss" or
    "grad_norm" (of the full-batch loss). chunk_size: rows per forward/backward; chunk i's loss is
    weighted by n_i / N, so the gradient is the full-batch one (loss_fn must be a mean over rows).
    time_unit: the GD step size the TensorBoard x-axis counts in (step = round(t / time_unit) with t the
    flow time or lr * k); None logs GD at its step k. `outcome` is set once training has ended.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, make_optimizer: Callable, rule: StopRule,
                 convergence: str = "loss", chunk_size: int | None = None, time_unit: float | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.loss_fn, self.make_optimizer, self.rule = model, loss_fn, make_optimizer, rule
        self.convergence, self.chunk_size, self.time_unit = convergence, chunk_size, time_unit
        self.outcome: str | None = None
        self.data: FullBatchData | None = None
        self.flow: FlowIntegrator | None = None

    # --- data, placed on the device once ---------------------------------------------------------------

    def use_data(self, data: FullBatchData) -> None:
        move = {name: getattr(data, name) for name in ("x", "y", "x_test", "y_test")}
        moved = {name: None if t is None else t.to(self.device) for name, t in move.items()}
        self.data = FullBatchData(**moved, target=data.target)

    def on_fit_start(self) -> None:
        if self.data is None or self.data.x.device != self.device:
            self.use_data(self.trainer.datamodule.data)

    def curvature_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full batch on this module's device: what the curvature monitors differentiate."""
        return self.data.x, self.data.y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.model.parameters())
        if isinstance(optimizer, FlowIntegrator):
            self.flow = optimizer
            self.flow.t_stop = self.rule.max_time if self.rule.max_time < float("inf") else None
        return optimizer

    # --- losses and quantities -------------------------------------------------------------------------

    def _chunks(self, x: torch.Tensor, y: torch.Tensor):
        size = self.chunk_size or len(x)
        for start in range(0, len(x), size):
            yield x[start:start + size], y[start:start + size], min(size, len(x) - start) / len(x)

    def full_batch_loss(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean loss over all rows (chunked), without a graph."""
        x, y = (self.data.x, self.data.y) if x is None else (x, y)
        with torch.no_grad():
            return sum(self.loss_fn(self.model(xc), yc) * w for xc, yc, w in self._chunks(x, y))

    def compute_gradient(self) -> torch.Tensor:
        """Zero the gradients, then accumulate the full-batch gradient chunk by chunk; returns the loss."""
        for p in self.model.parameters():
            p.grad = None
        total = torch.zeros((), dtype=self.data.x.dtype, device=self.device)
        for x, y, weight in self._chunks(self.data.x, self.data.y):
            loss = self.loss_fn(self.model(x), y) * weight
            self.manual_backward(loss)
            total = total + loss.detach()
        return total

    def quantities(self) -> dict[str, torch.Tensor]:
        """What the model knows (its quantities()), plus the loss; without them: loss, squared parameter
        norm and gradient norm. Classification data adds accuracy (and test loss / accuracy)."""
        with measuring(self.model):
            values = {"loss": self.full_batch_loss()}
            known = getattr(self.model, "quantities", None)
            if callable(known):
                values.update(known())
            else:
                values["norm"] = self._squared_norm()
                values["grad_norm"] = self._gradient_norm()
            data = self.data
            if not data.y.is_floating_point():
                with torch.no_grad():
                    values["accuracy"] = self._accuracy(data.x, data.y)
                    if data.x_test is not None:
                        values["test_loss"] = self.full_batch_loss(data.x_test, data.y_test)
                        values["test_accuracy"] = self._accuracy(data.x_test, data.y_test)
        return values

    def _accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hits = sum((self.model(xc).argmax(dim=-1) == yc).sum() for xc, yc, _ in self._chunks(x, y))
        return hits.to(x.dtype) / len(y)

    def _squared_norm(self) -> torch.Tensor:
        with torch.no_grad():
            return sum(p.square().sum() for p in self.model.parameters())

    def _gradient_norm(self) -> torch.Tensor:
        with torch.enable_grad(), torch.inference_mode(False):
            params = [p for p in self.model.parameters() if p.requires_grad]
            total = sum(self.loss_fn(self.model(x), y) * w for x, y, w in self._chunks(self.data.x, self.data.y))
            grads = torch.autograd.grad(total, params)
        return torch.sqrt(sum(g.square().sum() for g in grads))

    # --- judging and stepping --------------------------------------------------------------------------

    @property
    def flow_time(self) -> float:
        return 0.0 if self.flow is None else self.flow.t

    def aligned_step(self) -> int:
        """The TensorBoard step of the current state (see time_unit)."""
        if self.flow is not None:
            return round(self.flow.t / self.time_unit)
        if self.time_unit is None:
            return int(self.trainer.global_step)
        return round(self.trainer.global_step * self.optimizers().param_groups[0]["lr"] / self.time_unit)

    def judge(self, loss: torch.Tensor | None = None, have_gradient: bool = False) -> str | None:
        """The StopRule's verdict on the current parameters; `loss` / gradients there if already computed."""
        with measuring(self.model):
            if self.convergence == "residual":
                error = float(self.model.quantities()["residual"])
            elif self.convergence == "loss":
                error = float(loss if loss is not None else self.full_batch_loss())
            else:
                error = float(torch.sqrt(sum(p.grad.square().sum() for p in self.model.parameters()))
                              if have_gradient else self._gradient_norm())
        return self.rule.judge(error, float(self._squared_norm()), self.trainer.global_step, self.flow_time,
                               interrupted=interrupt.requested() is not None)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        if self.flow is None:
            loss = self.compute_gradient()
            verdict = self.judge(loss, have_gradient=True)
        else:
            loss, verdict = None, self.judge()
        if verdict is not None:
            self.outcome = verdict
            self.trainer.should_stop = True
            return None
        if self.flow is None:
            optimizer.step()  # GD: the gradient above
        else:
            optimizer.step(closure=self.compute_gradient)
        return loss

    def final_outcome(self) -> str:
        """The outcome, judging the state after the last step if training ran out of steps."""
        if self.outcome is None:
            self.outcome = self.judge()
        return self.outcome

    def on_train_end(self) -> None:
        self.final_outcome()
