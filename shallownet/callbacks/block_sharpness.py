"""BlockSharpnessMonitor: per-block sharpness along a run, the top eigenvalue of the Hessian restricted to the
parameters of each top-level block of the net (shallownet.curvature.blocks).

    curvature/block_sharpness_<block>  lambda_max(H_BB) for each block B of parameter_blocks(net, depth): the
                                       net's top-level modules and parameters (depth 1; "stage2.block1" at
                                       depth 2); by Cauchy interlacing each is <= curvature/sharpness
    curvature/block_hvp_count          the (block) HVPs all blocks spent at this step

The net is `pl_module.model` when that module holds all of pl_module's trainable parameters (block names
then leave out the "model." prefix), else pl_module itself. Data and loss: as SharpnessMonitor's. Each
block's solve is warm-started from that block's previous eigenvectors (one EigenTracker per block); all
blocks share one Hessian operator, so with one chunk of data the first-order graph is built once per
measurement and each block HVP costs one second backward.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.sharpness import curvature_operator, curvature_refusal
from shallownet.curvature import BlockOperator, EigenTracker, parameter_blocks
from shallownet.curvature.operators import LossFn, full_precision, trainable_parameters

BLOCK_SHARPNESS = "curvature/block_sharpness_{}"
BLOCK_HVP_COUNT = "curvature/block_hvp_count"


def net_blocks(pl_module: nn.Module, depth: int = 1) -> dict[str, str]:
    """{block name as logged: its parameter prefix in pl_module} (see the module docstring)."""
    net = getattr(pl_module, "model", None)
    inner = isinstance(net, nn.Module) and len(trainable_parameters(net)) == len(trainable_parameters(pl_module))
    blocks = parameter_blocks(net if inner else pl_module, depth)
    return {name: f"model.{name}" if inner else name for name in blocks}


class BlockSharpnessMonitor(PeriodicMonitor):
    """Logs curvature/block_sharpness_<block> at PeriodicMonitor's cadence (module docstring). Each solve stops
    at relative residual <= tol (raised to 1000 machine epsilons, as SharpnessMonitor's) or after max_iter
    HVPs. States with non-finite parameters are skipped."""

    def __init__(self, every_n_steps: int = 10, tol: float = 1e-10, max_iter: int = 1000, depth: int = 1,
                 loss_fn: LossFn | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 chunk_size: int | None = None):
        super().__init__(every_n_steps)
        if max_iter < 1 or not tol > 0 or depth < 1:
            raise ValueError(f"need max_iter >= 1, tol > 0 and depth >= 1; got {max_iter}, {tol} and {depth}")
        self.tol, self.max_iter, self.depth = tol, max_iter, depth
        self.loss_fn, self.data, self.chunk_size = loss_fn, data, chunk_size
        self.trackers: dict[str, EigenTracker] = {}
        self._operator = None
        self._blocks: dict[str, BlockOperator] = {}

    def refusal(self, pl_module, process) -> str | None:
        return curvature_refusal(pl_module, self.loss_fn, self.data, self.chunk_size)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._operator = None  # one operator per fit, built at the first measurement

    def extra_state(self) -> dict:
        return {"previous": {name: tracker.previous for name, tracker in self.trackers.items()}}

    def load_extra_state(self, state: dict) -> None:
        for name, previous in state["previous"].items():
            self._tracker(name).previous = previous

    def _tracker(self, name: str) -> EigenTracker:
        if name not in self.trackers:
            self.trackers[name] = EigenTracker(k=1, tol=self.tol, max_iter=self.max_iter)
        return self.trackers[name]

    def block_operators(self, pl_module: L.LightningModule) -> dict[str, BlockOperator]:
        """{block name: H restricted to its parameters}, built once per fit."""
        if self._operator is None or self._operator.model is not pl_module:
            self._operator = curvature_operator(pl_module, self.loss_fn, self.data, self.chunk_size)
            self._blocks = {name: BlockOperator(self._operator, prefix)
                            for name, prefix in net_blocks(pl_module, self.depth).items()}
        return self._blocks

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return {}
        blocks = self.block_operators(pl_module)
        values, n_hvp = {}, 0
        with full_precision():
            for name, block in blocks.items():
                tracker = self._tracker(name)
                tracker.tol = max(self.tol, 1000 * torch.finfo(block.dtype).eps)
                result = tracker.solve(block)
                n_hvp += result.n_hvp
                if math.isfinite(result.value):
                    values[BLOCK_SHARPNESS.format(name)] = result.value
        self._operator.release()
        if values:
            values[BLOCK_HVP_COUNT] = float(n_hvp)
        return values
