"""Mini-batch SGD (torch.optim.SGD's rule, optional heavy-ball momentum) on batches drawn without replacement.

Each epoch is one permutation of the rows drawn from a torch.Generator seeded with `batch_seed`; step k
takes batch k mod (batches per epoch) of epoch k // (batches per epoch). The permutations are drawn lazily
and in order, so the batch of a step is a function of the step alone, whoever asks first (the run, or a
monitor peeking at the next step's batch). The generator's state and the current epoch's permutation are
in state_dict, so a resumed run draws the batches the uninterrupted one drew, bit for bit.

The threshold is heavy ball's, (2 + 2 beta) / lr, on the full-batch lambda_max: the linear stability of a
quadratic under full-batch steps. Under SGD lambda_max settles below it and the batch sharpness (the
batch_sharpness monitor) is what reaches 2 / lr (Andreyev & Beneventano, arXiv 2412.20553).
"""

from __future__ import annotations

import math

import torch

from shallownet.processes.base import Process
from shallownet.processes.descent import Momentum


class SGD(Momentum):
    """torch.optim.SGD(lr, momentum) on the gradient of the mean loss over the step's batch."""

    method = "sgd"
    minibatch = True

    def __init__(self, lr: float, momentum: float, batch_size: int, batch_seed: int, drop_last: bool):
        Process.__init__(self, lr=lr, momentum=momentum, batch_size=batch_size, batch_seed=batch_seed,
                         drop_last=drop_last)
        self.rows: int | None = None  # rows of the training set, known at the first batch
        self._generator: torch.Generator | None = None
        self._epoch = -1  # the epoch whose permutation is _order (-1: none drawn yet)
        self._order: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.hyperparameters["batch_size"]

    def refusal(self, rows: int) -> str | None:
        if self.batch_size > rows:
            return f"config key 'optim.batch_size' must be at most the {rows} training rows, got {self.batch_size}"
        return None

    def batches_per_epoch(self, rows: int) -> int:
        full, rest = divmod(rows, self.batch_size)
        return full if self.hyperparameters["drop_last"] or not rest else full + 1

    def batch_indices(self, step: int, rows: int) -> torch.Tensor:
        """The rows (CPU int64) of the batch that step `step` (from state `step` to `step` + 1) is taken on."""
        why = self.refusal(rows)
        if why is not None:
            raise ValueError(why)
        self.rows = rows
        epoch, position = divmod(step, self.batches_per_epoch(rows))
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.hyperparameters["batch_seed"])
        if epoch < self._epoch:
            raise ValueError(f"step {step} is in epoch {epoch}, before the epoch drawn last ({self._epoch})")
        while self._epoch < epoch:
            self._order = torch.randperm(rows, generator=self._generator)
            self._epoch += 1
        return self._order[position * self.batch_size:(position + 1) * self.batch_size]

    def clock(self, step: int) -> dict[str, float]:
        """process/epoch: the epochs completed after `step` steps (fractional)."""
        if self.rows is None:
            return {"process/epoch": 0.0 if step == 0 else math.nan}
        return {"process/epoch": step / self.batches_per_epoch(self.rows)}

    def work(self, steps: int) -> dict:
        """Batch gradients, and the rows they took in full-batch gradients (a full epoch: 1, or less with
        drop_last)."""
        if self.rows is None:
            return {"grad_evals": 0.0 if steps == 0 else math.nan, "batch_grads": steps}
        per_epoch = self.batches_per_epoch(self.rows)
        epochs, position = divmod(steps, per_epoch)
        per_epoch_rows = min(per_epoch * self.batch_size, self.rows)
        used = epochs * per_epoch_rows + position * self.batch_size  # only the last batch of an epoch is short
        return {"grad_evals": used / self.rows, "batch_grads": steps}

    def state_dict(self) -> dict:
        return {"generator": None if self._generator is None else self._generator.get_state(),
                "epoch": self._epoch, "order": self._order, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self._epoch, self._order, self.rows = state["epoch"], state["order"], state["rows"]
        self._generator = None
        if state["generator"] is not None:
            self._generator = torch.Generator()
            self._generator.set_state(state["generator"])
