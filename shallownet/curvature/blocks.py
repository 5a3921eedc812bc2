"""Per-block sharpness: the top eigenvalue of the Hessian restricted to one group of parameters, H_BB (the
diagonal block of one layer or residual block; hessian-eigenthings' parameter filter, init2winit's block
Hessians). Its eigenvalues interlace H's: block sharpness <= sharpness.

    op = HessianOperator(model, loss_fn, (X, Y))
    block_sharpness(op, "stage2.block1")     # EigenResult of H_BB over the parameters named stage2.block1.*
    parameter_blocks(model)                   # {"conv1": [...], "stage1": [...], ...}: names by top-level module
"""

from __future__ import annotations

import torch

from shallownet.curvature.eigen import EigenResult, top_eigenvalue
from shallownet.curvature.operators import trainable_parameters


def parameter_blocks(model: torch.nn.Module, depth: int = 1) -> dict[str, list[str]]:
    """The trainable parameters' names grouped by the first `depth` parts of their dotted names, in order."""
    blocks: dict[str, list[str]] = {}
    for name in trainable_parameters(model):
        blocks.setdefault(".".join(name.split(".")[:depth]), []).append(name)
    return blocks


class BlockOperator:
    """v_B -> (H [v_B; 0])_B: the Hessian restricted to the parameters named `prefix` or `prefix.*`."""

    def __init__(self, operator, prefix: str):
        self.operator = operator
        sizes = [(name, p.numel()) for name, p in trainable_parameters(operator.model).items()]
        mask = torch.cat([torch.full((n,), name == prefix or name.startswith(prefix + "."), dtype=torch.bool)
                          for name, n in sizes])
        if not mask.any():
            raise ValueError(f"no trainable parameter is named {prefix!r} or {prefix}.*; the parameters are "
                             f"{', '.join(name for name, _ in sizes)}")
        self.index = mask.nonzero().flatten().to(operator.device)
        self.dim, self.dtype, self.device = len(self.index), operator.dtype, operator.device

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(self.operator.dim, dtype=self.dtype, device=self.device)
        full[self.index] = vector
        return self.operator(full)[self.index]


def block_sharpness(operator, prefix: str, v0: torch.Tensor | None = None, **solver) -> EigenResult:
    """The largest eigenvalue of H restricted to the parameters named `prefix` (or under it), by
    top_eigenvalue (solver: its method, tol, max_iter, seed); v0 warm-starts it (length: the block's)."""
    return top_eigenvalue(BlockOperator(operator, prefix), v0, **solver)
