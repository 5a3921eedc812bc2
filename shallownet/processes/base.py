"""What a run and its monitors ask of the optimisation process, in one object.

A Process makes the torch.optim.Optimizer that Lightning steps (so global_step counts its steps) and tells
everyone else what the process is: its clock (the x-axis), the stability threshold of the sharpness that
governs it and which sharpness that is, whether GD's exact one-step identities or gradient flow's
conservation laws hold, and its preconditioner where it has one. Monitors ask the process (process_of),
never the optimizer's param_groups or a method string; `describe_optimizer` gives the same view of a
plain torch optimizer in anyone's LightningModule. A process is plain Python until it makes its optimizer
(torch is imported then), so configs can ask it about its clock and threshold before any heavy import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from shallownet.curvature import HessianOperator

GD_IDENTITIES = "gd"  # each step is theta - lr * (full-batch gradient at theta): theory.md sections 3, 8
FLOW_IDENTITIES = "flow"  # gradient flow: every Q_i, D_l and C_j is conserved


class Process:
    """An optimisation process with hyperparameters (the keys of its config section, `method` aside).

    Class attributes a process sets: `method` (its registered name); `identities` (GD_IDENTITIES,
    FLOW_IDENTITIES or None); `preconditioned` (its threshold is for lambda_max(P^-1 H) with P its
    preconditioner, not for the Hessian's); `integrates` (step(closure) evaluates the gradients itself, as an
    ODE integrator does; otherwise step() applies the full-batch gradient the run left in .grad);
    `needs_curvature` (its velocity takes Hessian products of the run's loss: make_optimizer's `curvature`).
    """

    method = "unknown"
    identities: str | None = None
    preconditioned = False
    integrates = False
    minibatch = False  # each step's gradient is that of batch_indices(step, rows), not of all rows
    needs_curvature = False

    def __init__(self, **hyperparameters):
        self.hyperparameters = hyperparameters
        self.optimizer: torch.optim.Optimizer | None = None
        self.curvature: Callable[[], HessianOperator] | None = None

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({keys})"

    @property
    def lr(self) -> float | None:
        """The step size eta of a discrete process; None for a flow."""
        return self.hyperparameters.get("lr")

    def make_optimizer(self, params: Iterable[torch.Tensor], max_time: float = math.inf,
                       curvature: Callable[[], HessianOperator] | None = None) -> torch.optim.Optimizer:
        """The optimizer over `params`, kept as self.optimizer (max_time: where a flow lands exactly;
        curvature: makes the HessianOperator of the run's loss over those parameters, for a process that
        needs_curvature; it is called at the first step, once the data is in place)."""
        if self.needs_curvature and curvature is None:
            raise ValueError(f"{self.method} needs the Hessian products of the loss: pass make_optimizer a curvature")
        self.curvature = curvature
        self.optimizer = self._optimizer(list(params), max_time)
        return self.optimizer

    def _optimizer(self, params: list[torch.Tensor], max_time: float) -> torch.optim.Optimizer:
        raise NotImplementedError(f"{self.method} makes no optimizer of its own")

    def time_per_step(self) -> float | None:
        """Process time per step for a discrete process (None: each step takes its own, as a flow's do)."""
        return self.lr

    def time(self, steps: int) -> float:
        """The process time after `steps` steps: the x-axis of compare, where processes overlay."""
        per_step = self.time_per_step()
        return float("nan") if per_step is None else steps * per_step

    def work(self, steps: int) -> dict:
        """What `steps` steps cost, for the run summary: full-batch gradients (one per discrete step)."""
        return {"grad_evals": steps}

    def threshold(self) -> float | None:
        """The stability threshold of the governing sharpness (None: the process has none)."""
        return None

    def preconditioner(self) -> torch.Tensor | None:
        """A preconditioned process's diagonal P, flat over the parameters with requires_grad, as of its last
        step (None before the first step, and for processes without one)."""
        return None

    def refusal(self, rows: int) -> str | None:
        """Why this process cannot train on `rows` training rows, a sentence naming the config key (None: it can)."""
        return None

    def curvature_refusal(self, curvature: Callable[[], HessianOperator]) -> str | None:
        """Why this process's velocity cannot be computed for the run's loss (None: it can), for a process that
        needs_curvature: curvature makes the run's HessianOperator, as in make_optimizer."""
        return None

    def batch_indices(self, step: int, rows: int) -> torch.Tensor | None:
        """The rows step `step` takes its gradient on, for a minibatch process (None: all of them)."""
        return None

    def clock(self, step: int) -> dict[str, float]:
        """process/* tags of the process's own beyond process/step and process/time (SGD: process/epoch)."""
        return {}

    def describe(self) -> dict:
        """`method` and the hyperparameters, for summaries and the hparams entry."""
        return {"method": self.method, **self.hyperparameters}

    def state_dict(self) -> dict:
        """State beyond the optimizer's own (which Lightning checkpoints with every run)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def process_of(trainer, pl_module) -> Process:
    """The module's own process (FullBatchModule has one), else the view of the trainer's optimizer."""
    own = getattr(pl_module, "process", None)
    if isinstance(own, Process):
        return own
    if not trainer.optimizers:
        raise ValueError("the module configured no optimizer, so there is no process to monitor")
    return describe_optimizer(trainer.optimizers[0])


def describe_optimizer(optimizer: torch.optim.Optimizer) -> Process:
    """The Process a torch optimizer is, as far as its class and hyperparameters say; an unrecognised one
    (or one with settings the thresholds do not cover, such as weight decay) is a Process with no threshold
    and no identities, which the monitors that need them refuse."""
    import torch

    from shallownet.flow import FlowIntegrator
    from shallownet.optim import GradientDescent
    from shallownet.processes import descent, flows

    if isinstance(optimizer, FlowIntegrator):
        return flows.GradientFlow.viewing(optimizer)
    groups = optimizer.param_groups
    group = groups[0]
    same = all({k: v for k, v in g.items() if k != "params"} == {k: v for k, v in group.items() if k != "params"}
               for g in groups)
    plain = same and not group.get("weight_decay") and not group.get("maximize")
    view = None
    if isinstance(optimizer, GradientDescent):
        view = descent.GradientDescentProcess(lr=group["lr"])
    elif type(optimizer) is torch.optim.SGD and plain and not group["dampening"]:
        if not group["momentum"]:
            view = descent.GradientDescentProcess(lr=group["lr"])
        else:
            kind = descent.Nesterov if group["nesterov"] else descent.Momentum
            view = kind(lr=group["lr"], momentum=group["momentum"])
    elif type(optimizer) is torch.optim.RMSprop and plain and not group["momentum"] and not group["centered"]:
        view = descent.RMSprop(lr=group["lr"], alpha=group["alpha"], eps=group["eps"])
    elif type(optimizer) is torch.optim.Adam and plain and not group["amsgrad"]:
        view = descent.Adam(lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"])
    if view is None:
        view = Process()
        view.method = type(optimizer).__name__
    view.optimizer = optimizer
    return view
