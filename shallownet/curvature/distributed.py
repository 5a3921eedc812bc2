"""Curvature operators over data split across processes: each rank's operator on its shard, summed.

Lives with the operators (not with the DDP glue of shallownet.distributed): a product is an operator
composed with one all-reduce, usable wherever torch.distributed is initialised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from shallownet.curvature.operators import WrappedOperator


class ShardedHessianOperator(WrappedOperator):
    """v -> H v for the loss over the data of all ranks, from each rank's operator over its shard.

    `operator` is a HessianOperator (mean-reduced loss) on this rank's rows of the data; the full-batch
    Hessian is sum_r (rows_r / total) H_r, so each product is weighted and summed with one all_reduce.
    Every rank must call it the same number of times (the eigensolvers do, from the same start).
    """

    def __init__(self, operator, rows: int, total: int):
        super().__init__(operator)
        self.rows, self.total = rows, total
        self.weight = rows / total

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        product = self.operator(vector) * self.weight
        dist.all_reduce(product)
        return product

    def gradient(self) -> torch.Tensor:
        gradient = self.operator.gradient() * self.weight
        dist.all_reduce(gradient)
        return gradient

    def release(self) -> None:
        self.operator.release()

    def check_agreement(self, value: float, n_hvp: int) -> None:
        """Raise if the ranks' eigensolvers did not end on the same eigenvalue with the same work (they run
        the same arithmetic on the same products, so they agree bit for bit on identical hardware)."""
        finite = value == value and abs(value) != float("inf")
        mine = torch.tensor([value if finite else 0.0, float(finite), float(n_hvp)], dtype=torch.float64,
                            device=self.device)
        both = torch.cat([mine, -mine])  # max and -min in one all-reduce
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = both[:3], -both[3:]
        if not torch.equal(high, low):
            raise RuntimeError(f"the ranks' eigensolvers disagree (max {high.tolist()}, min {low.tolist()}): "
                               "are the processes running on different hardware or software?")
