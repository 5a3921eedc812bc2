"""The discrete processes: GD and torch.optim's momentum, Nesterov, RMSprop and Adam, full batch.

Each is that optimizer (torch.optim's own update rule, on the full-batch gradient the run computes), plus
what theory says of it: its time per step and the stability threshold of docs/theory.md section 9, the
largest sharpness at which a minimum of a quadratic is linearly stable under the process:

    gd        2 / lr                                  on lambda_max(H)
    momentum  (2 + 2 beta) / lr                       on lambda_max(H)
    nesterov  (2 + 2 beta) / (lr (1 + 2 beta))        on lambda_max(H)
    rmsprop   2 / lr                                  on lambda_max(P^-1 H),  P = diag(sqrt(v) + eps)
    adam      (2 + 2 beta1) / ((1 - beta1) lr)        on lambda_max(P^-1 H),
                                                      P = (1 - beta1^t) diag(sqrt(v / (1 - beta2^t)) + eps)

(Cohen et al. 2021, 2022). The adaptive processes' preconditioner is read from the optimizer's state: the
one the last step used, so the preconditioned sharpness at theta_k is taken with the P that produced it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from shallownet.processes.base import GD_IDENTITIES, Process

if TYPE_CHECKING:
    import torch


class GradientDescentProcess(Process):
    """p <- p - lr g: the paper's process, for which every one-step identity of theory.md holds."""

    method = "gd"
    identities = GD_IDENTITIES

    def __init__(self, lr: float):
        super().__init__(lr=lr)

    def _optimizer(self, params, max_time):
        from shallownet.optim import GradientDescent

        return GradientDescent(params, lr=self.lr)

    def threshold(self) -> float:
        return 2.0 / self.lr


class Momentum(Process):
    """Heavy ball (torch.optim.SGD, dampening 0): buf <- beta buf + g, p <- p - lr buf.

    Its time per step is the effective step lr / (1 - beta): on slow time scales heavy ball follows
    gradient flow at that speed, so compare overlays it with GD at the same effective step."""

    method = "momentum"
    nesterov = False

    def __init__(self, lr: float, momentum: float):
        super().__init__(lr=lr, momentum=momentum)

    def _optimizer(self, params, max_time):
        import torch

        return torch.optim.SGD(params, lr=self.lr, momentum=self.beta, nesterov=self.nesterov)

    @property
    def beta(self) -> float:
        return self.hyperparameters["momentum"]

    def time_per_step(self) -> float:
        return self.lr / (1.0 - self.beta)

    def threshold(self) -> float:
        return (2.0 + 2.0 * self.beta) / self.lr


class Nesterov(Momentum):
    """torch.optim.SGD(nesterov=True): buf <- beta buf + g, p <- p - lr (g + beta buf)."""

    method = "nesterov"
    nesterov = True

    def threshold(self) -> float:
        return (2.0 + 2.0 * self.beta) / (self.lr * (1.0 + 2.0 * self.beta))


class _Adaptive(Process):
    """A process whose threshold is for the preconditioned sharpness lambda_max(P^-1 H)."""

    preconditioned = True

    def preconditioner(self) -> torch.Tensor | None:
        import torch

        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        states = [self.optimizer.state.get(p) for p in params]
        if not params or any(not state for state in states):
            return None  # before the first step
        return torch.cat([self._diagonal(state).reshape(-1) for state in states])

    def _diagonal(self, state: dict) -> torch.Tensor:
        raise NotImplementedError


class RMSprop(_Adaptive):
    """torch.optim.RMSprop (no momentum, not centred): v <- alpha v + (1 - alpha) g^2, p <- p - lr g / P."""

    method = "rmsprop"

    def __init__(self, lr: float, alpha: float, eps: float):
        super().__init__(lr=lr, alpha=alpha, eps=eps)

    def _optimizer(self, params, max_time):
        import torch

        h = self.hyperparameters
        return torch.optim.RMSprop(params, lr=h["lr"], alpha=h["alpha"], eps=h["eps"])

    def threshold(self) -> float:
        return 2.0 / self.lr

    def _diagonal(self, state: dict) -> torch.Tensor:
        return state["square_avg"].sqrt() + self.hyperparameters["eps"]


class Adam(_Adaptive):
    """torch.optim.Adam (bias-corrected, no weight decay, no amsgrad): with m, v the moment estimates after
    t steps, p <- p - lr m / P_t."""

    method = "adam"

    def __init__(self, lr: float, betas: tuple[float, float], eps: float):
        super().__init__(lr=lr, betas=tuple(betas), eps=eps)

    def _optimizer(self, params, max_time):
        import torch

        h = self.hyperparameters
        return torch.optim.Adam(params, lr=h["lr"], betas=h["betas"], eps=h["eps"])

    def threshold(self) -> float:
        beta1 = self.hyperparameters["betas"][0]
        return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * self.lr)

    def _diagonal(self, state: dict) -> torch.Tensor:
        beta1, beta2 = self.hyperparameters["betas"]
        t = float(state["step"])
        denominator = state["exp_avg_sq"].sqrt() / math.sqrt(1.0 - beta2**t) + self.hyperparameters["eps"]
        return (1.0 - beta1**t) * denominator  # torch's own order of operations

    def describe(self) -> dict:
        return {**super().describe(), "betas": list(self.hyperparameters["betas"])}

