"""Hand-rolled full-batch gradient descent as a torch.optim.Optimizer.

An Optimizer subclass (not a bare `p -= lr * g`) because Lightning advances global_step, and so
max_steps and the TensorBoard x-axis, only when an optimizer's step() runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class GradientDescent(torch.optim.Optimizer):
    """p <- p - lr * grad L(p), all parameters updated from the gradient at the same point."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss
