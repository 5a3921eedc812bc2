"""The LightningModule that trains any model full-batch with a hand-rolled optimizer and ends itself.

Manual optimisation. Each training_step judges the current state with the run's StopRule (converged,
diverged, a budget, an interruption) and, if the run goes on, takes one step of the run's process
(shallownet.processes): a discrete process (GD, momentum, Adam, ...) applies the full-batch gradient computed
first (chunked; it also serves the judgement), a minibatch one (SGD) the gradient on the rows of its
batch_indices(step) (the judgement measures the full-batch loss apart), an integrating one (gradient
flow) calls the closure as often as its stages need. The data set lives on the module's device, placed once.

Under Lightning's DDP (several processes) each process keeps one block of the rows (shallownet.distributed)
and every sum over the data is summed over the processes too, so the run is the one-process run: the
gradient (chunk weights n_i / N with the global N; DDP's own averaging is bypassed), the losses and counts
the StopRule and the monitors see, and the stop decision (a stop request on any process stops them all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from torch import nn

from shallownet import distributed, interrupt
from shallownet.processes.base import Process
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


def _euclidean_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """|(t_1, ..., t_n)|_2 of the tensors taken as one vector (the same sum, in the same order, everywhere)."""
    return torch.sqrt(sum(t.square().sum() for t in tensors))


class FullBatchModule(L.LightningModule):
    """Full-batch training of `model` on the data of the trainer's FullBatchDataModule (or `use_data`), by
    `process` (a shallownet.processes.base.Process: it makes the optimizer and keeps the clock).

    convergence: what `rule.tol` bounds: "residual" (|eps| from the model's quantities()), "loss" or
    "grad_norm" (of the full-batch loss). rule.max_time bounds the process time. chunk_size: rows per
    forward/backward; chunk i's loss is weighted by n_i / N, so the gradient is the full-batch one (loss_fn
    must be a mean over rows). time_unit: the process time one TensorBoard x-axis step stands for (step =
    round(time / time_unit)); None logs at the process's step count. `outcome` is set once training has ended.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, process: Process, rule: StopRule,
                 convergence: str = "loss", chunk_size: int | None = None, time_unit: float | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.loss_fn, self.process, self.rule = model, loss_fn, process, rule
        self.convergence, self.chunk_size, self.time_unit = convergence, chunk_size, time_unit
        self.outcome: str | None = None
        self.data: FullBatchData | None = None  # on this module's device: all rows, or this rank's shard
        self.shard: distributed.Shard | None = None  # which rows, when the data is split over processes
        self._source: FullBatchData | None = None  # the whole data set, as given to use_data
        self._votes: bool = False  # whether some rank asked to stop, from the last gradient's all-reduce

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the running hook on the module before and after every hook call, about 30 times a
        # step; nn.Module.__setattr__ would check parameters, submodules and buffers each time.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # --- data, placed on the device once ---------------------------------------------------------------

    def use_data(self, data: FullBatchData) -> None:
        self._source, self.shard = data, None
        self.data = self._placed(data)

    def _placed(self, data: FullBatchData) -> FullBatchData:
        move = {name: getattr(data, name) for name in ("x", "y", "x_test", "y_test")}
        moved = {name: None if t is None else t.to(self.device) for name, t in move.items()}
        return FullBatchData(**moved, target=data.target)

    def on_fit_start(self) -> None:
        world = self.trainer.world_size
        if world > 1 and self.process.minibatch:
            raise ValueError(f"{self.process.method} draws mini-batches of all rows: it runs on one process")
        if world > 1:  # DDP: this rank's block of the rows, the rest never reaches its device
            distributed.check_trainer(self.trainer)
            source = self._source if self._source is not None else self.trainer.datamodule.data
            from shallownet.curvature.operators import batch_statistics_module

            found = batch_statistics_module(self.model)
            if found is not None:
                raise ValueError(f"{type(found[1]).__name__} {found[0]!r} normalises with the statistics of its "
                                 "batch, which under DDP would be each process's shard: not the full-batch loss")
            part, self.shard = distributed.shard(source, self.trainer.global_rank, world)
            self.data = self._placed(part)
        elif self.data is None or self.data.x.device != self.device or self.shard is not None:
            self.use_data(self._source if self._source is not None else self.trainer.datamodule.data)

    def curvature_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full batch on this module's device (under DDP: this rank's shard, see curvature_share)."""
        return self.data.x, self.data.y

    def curvature_share(self) -> tuple[int, int] | None:
        """(rows here, rows in all) when curvature_data() is this rank's shard of data split over processes;
        None when it is the whole data set."""
        return None if self.shard is None else (self.shard.rows, self.shard.total)

    def _sum_over_ranks(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the ranks (one all-reduce) when the data is sharded; else as they are."""
        return tensors if self.shard is None else distributed.all_reduce_sum(tensors)

    def _total(self, test: bool = False) -> int:
        """The rows of the training (test) set over all ranks: the denominator of the chunk weights."""
        if self.shard is None:
            return len(self.data.x_test if test else self.data.x)
        return self.shard.test_total if test else self.shard.total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self):
        return self.process.make_optimizer(self.model.parameters(), max_time=self.rule.max_time,
                                           curvature=self._curvature_operator)

    def _curvature_operator(self):
        """The HessianOperator of the full-batch loss, for a process whose velocity needs Hessian products."""
        from shallownet.curvature import HessianOperator

        if self.shard is not None:
            raise ValueError(f"{self.process.method} takes Hessian products of the whole data set: run it on one "
                             "process (trainer.devices=1)")
        return HessianOperator(self.model, self.loss_fn, self.curvature_data(), chunk_size=self.chunk_size)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["process"] = self.process.state_dict()
        checkpoint["x_step"] = self.aligned_step()  # where the logs of this state are drawn (a resume cuts there)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.process.load_state_dict(checkpoint.get("process", {}))

    # --- losses and quantities -------------------------------------------------------------------------

    def _chunks(self, x: torch.Tensor, y: torch.Tensor, total: int | None = None):
        """(x, y, weight) chunks of at most chunk_size rows; weight = rows / total (default total: len(x))."""
        size, total = self.chunk_size or max(len(x), 1), total or len(x)
        for start in range(0, len(x), size):
            yield x[start:start + size], y[start:start + size], min(size, len(x) - start) / total

    def _local_loss(self, x: torch.Tensor, y: torch.Tensor, total: int) -> torch.Tensor:
        """sum_i w_i loss(chunk i) over the rows given (a rank's shard may hold no test rows: 0)."""
        with torch.no_grad():
            loss = sum(self.loss_fn(self.model(xc), yc) * w for xc, yc, w in self._chunks(x, y, total))
        if isinstance(loss, torch.Tensor):
            return loss
        return torch.zeros((), dtype=self._value_dtype(), device=self.device)

    def full_batch_loss(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean loss over all rows (chunked), without a graph: of the training set (over all ranks under
        DDP), or of the rows (x, y) given."""
        if x is not None:
            return self._local_loss(x, y, len(x))
        (loss,) = self._sum_over_ranks([self._local_loss(self.data.x, self.data.y, self._total())])
        return loss

    def _no_gradient_sync(self):
        """DDP's reducer left out of the backward passes: it would average each backward's gradients over
        the ranks (once per chunk, and with a mismatched number of chunks per rank, hang); the module sums
        them itself, with the right weights."""
        from torch.nn.parallel import DistributedDataParallel

        trainer = getattr(self, "_trainer", None)
        wrapper = None if trainer is None else trainer.strategy.model
        return wrapper.no_sync() if isinstance(wrapper, DistributedDataParallel) else nullcontext()

    def compute_gradient(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Zero the gradients, then accumulate the full-batch gradient chunk by chunk; returns the loss.
        With `rows` (indices, one process only): the gradient of the mean loss over those rows.

        Under DDP each rank accumulates its shard's part (weights n_i / N, N global) and one all-reduce sums
        the gradients, the loss and the ranks' stop requests."""
        for p in self.model.parameters():
            p.grad = None
        total = torch.zeros((), dtype=self._value_dtype(), device=self.device)
        inputs, targets, total_rows = self.data.x, self.data.y, self._total()
        if rows is not None:
            rows = rows.to(inputs.device)
            inputs, targets, total_rows = inputs[rows], targets[rows], len(rows)
        with self._no_gradient_sync():
            for x, y, weight in self._chunks(inputs, targets, total_rows):
                loss = self.loss_fn(self.model(x), y) * weight
                self.manual_backward(loss)
                total = total + loss.detach()
        if self.shard is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            stop = torch.tensor(float(interrupt.requested() is not None), dtype=total.dtype, device=self.device)
            *grads, total, stop = distributed.all_reduce_sum([*(p.grad for p in params), total, stop])
            for p, g in zip(params, grads, strict=True):
                p.grad.copy_(g)
            self._votes = bool(stop > 0)
        return total

    def quantities(self) -> dict[str, torch.Tensor]:
        """What the model knows (its quantities()), plus the loss; without them: loss, squared parameter
        norm and gradient norm. Classification data adds accuracy (and test loss / accuracy). Under DDP the
        sums over the data are summed over the ranks, all in one all-reduce."""
        with measuring(self.model):
            data = self.data
            local = {"loss": self._local_loss(data.x, data.y, self._total())}
            known = getattr(self.model, "quantities", None)
            values = dict(known()) if callable(known) else {"norm": self._squared_norm()}
            grads = [] if callable(known) else self._local_gradient()
            if not data.y.is_floating_point():
                with torch.no_grad():
                    local["hits"] = self._hits(data.x, data.y)
                    if data.x_test is not None:
                        local["test_loss"] = self._local_loss(data.x_test, data.y_test, self._total(test=True))
                        local["test_hits"] = self._hits(data.x_test, data.y_test)
            reduced = self._sum_over_ranks([*local.values(), *grads])
            local, grads = dict(zip(local, reduced[:len(local)], strict=True)), reduced[len(local):]
        result = {"loss": local["loss"], **values}
        if not callable(known):
            result["grad_norm"] = _euclidean_norm(grads)
        if "hits" in local:
            result["accuracy"] = local["hits"].to(self._value_dtype()) / self._total()
            if "test_hits" in local:
                result["test_loss"] = local["test_loss"]
                result["test_accuracy"] = local["test_hits"].to(self._value_dtype()) / self._total(test=True)
        return result

    def _value_dtype(self) -> torch.dtype:
        """The dtype of losses and measurements: the parameters' (the inputs may be integer tokens)."""
        return next(self.model.parameters()).dtype

    def _hits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many rows the model classifies right (an integer tensor); a row with several labels (a
        sequence's answers) is right when all of them are."""
        hits = sum((self.model(xc).argmax(dim=-1) == yc).reshape(len(yc), -1).all(dim=1).sum()
                   for xc, yc, _ in self._chunks(x, y))
        return torch.as_tensor(hits, device=self.device)

    def _squared_norm(self) -> torch.Tensor:
        with torch.no_grad():
            return sum(p.square().sum() for p in self.model.parameters())

    def _local_gradient(self) -> list[torch.Tensor]:
        """This rank's part of the full-batch gradient (all of it on one process), by autograd.grad: no .grad
        is touched."""
        with torch.enable_grad(), torch.inference_mode(False):
            params = [p for p in self.model.parameters() if p.requires_grad]
            total = sum(self.loss_fn(self.model(x), y) * w
                        for x, y, w in self._chunks(self.data.x, self.data.y, self._total()))
            return list(torch.autograd.grad(total, params))

    def _gradient_norm(self) -> torch.Tensor:
        grads = self._sum_over_ranks(self._local_gradient())
        return _euclidean_norm(grads)

    # --- judging and stepping --------------------------------------------------------------------------

    def time(self) -> float:
        """The process time of the current state."""
        return self.process.time(self.trainer.global_step)

    def aligned_step(self) -> int:
        """The TensorBoard step of the current state (see time_unit)."""
        if self.time_unit is None:
            return int(self.trainer.global_step)
        return round(self.time() / self.time_unit)

    def judge(self, loss: torch.Tensor | None = None, have_gradient: bool = False) -> str | None:
        """The StopRule's verdict on the current parameters; `loss` / gradients there if already computed."""
        if self.convergence == "residual":  # a function of the parameters alone: no data, no random stream
            residual = getattr(self.model, "residual", None)
            error = float(residual() if callable(residual) else self.model.quantities()["residual"])
        else:
            error = self._convergence_error(loss, have_gradient)
        return self.rule.judge(error, float(self._squared_norm()), self.trainer.global_step, self.time(),
                               interrupted=self._stop_requested(counted=have_gradient))

    def _convergence_error(self, loss: torch.Tensor | None, have_gradient: bool) -> float:
        """The loss or the gradient norm, measured (if not given) without touching the run's state."""
        if self.convergence == "loss" and loss is not None:
            return float(loss)
        if self.convergence == "grad_norm" and have_gradient:
            return float(_euclidean_norm([p.grad for p in self.model.parameters()]))
        with measuring(self.model):  # only a fresh forward can draw random numbers or move buffers
            return float(self.full_batch_loss() if self.convergence == "loss" else self._gradient_norm())

    def _stop_requested(self, counted: bool = False) -> bool:
        """A stop request (SIGINT / SIGTERM) here or, under DDP, on any rank, so that all stop at the same step
        (counted: the requests were summed with the gradient just computed)."""
        if self.shard is None:
            return interrupt.requested() is not None
        if counted:
            return self._votes
        mine = torch.tensor(float(interrupt.requested() is not None), dtype=torch.float64, device=self.device)
        (votes,) = distributed.all_reduce_sum([mine])
        return bool(votes > 0)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        integrates, minibatch = self.process.integrates, self.process.minibatch
        if integrates or minibatch:  # the verdict is on the full-batch loss, measured apart
            loss, verdict = None, self.judge()
        else:
            loss = self.compute_gradient()
            verdict = self.judge(loss, have_gradient=True)
        if verdict is not None:
            self.outcome = verdict
            self.trainer.should_stop = True
            return None
        if integrates:
            optimizer.step(closure=self.compute_gradient)
        elif minibatch:
            loss = self.compute_gradient(self.process.batch_indices(self.trainer.global_step, len(self.data.x)))
            optimizer.step()  # the batch's gradient
        else:
            optimizer.step()  # the gradient above
        return loss

    def final_outcome(self) -> str:
        """The outcome, judging the state after the last step if training ran out of steps."""
        if self.outcome is None:
            self.outcome = self.judge()
        return self.outcome

    def on_train_end(self) -> None:
        self.final_outcome()
