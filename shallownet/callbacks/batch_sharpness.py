"""BatchSharpnessMonitor: the batch sharpness and its companions (shallownet.curvature.batch) during a run.

Tags (a contract), at the state after k steps:

    curvature/step_sharpness          g_B^T H_B g_B / |g_B|^2 on the batch B of the step taken from this state
                                      (at the parameters before it); B is all rows for a full-batch process
    curvature/batch_sharpness         mean over fresh batches of the training batch size of the same ratio
    curvature/batch_sharpness_stderr  the standard error of that mean of ratios (0 with exact=true)
    curvature/gni                     mean_B g_B^T H g_B / |grad L|^2
    curvature/batch_lambda_max        mean_B lambda_max(H_B)
    curvature/gni_stderr, curvature/batch_lambda_max_stderr   their standard errors (0 with exact=true)

The fresh batches come from the monitor's own torch.Generator (seeded; its state is checkpointed), common
to all quantities; exact=true takes every one of the C(n, b) batches instead. Measuring draws from no
stream of the run's and changes no buffer (module.measuring), so the trajectory is the unmonitored one.
On the shallow net with scalar inputs every g_B is parallel to (b; a), so batch_sharpness is exactly the
full-batch g^T H g / |g|^2 (with exact=true), below lambda_max.
"""

from __future__ import annotations

import math

import torch

from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.curvature import batch
from shallownet.module import measuring
from shallownet.processes.base import process_of

MAX_EXACT = 20000  # batches enumerated at most with exact=true


class BatchSharpnessMonitor(PeriodicMonitor):
    def __init__(self, every_n_steps: int, n_batches: int = 100, exact: bool = False, seed: int = 0):
        super().__init__(every_n_steps)
        self.n_batches, self.exact = n_batches, exact
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def batch_size(process, rows: int) -> int:
        return process.hyperparameters["batch_size"] if process.minibatch else rows

    def refusal(self, pl_module, process) -> str | None:
        if not callable(getattr(pl_module, "curvature_data", None)) or not callable(getattr(pl_module, "loss_fn",
                                                                                            None)):
            return "the module has no curvature_data() and loss_fn"
        rows = len(pl_module.curvature_data()[0])
        if self.exact and math.comb(rows, self.batch_size(process, rows)) > MAX_EXACT:
            return (f"exact=true would enumerate C({rows}, {self.batch_size(process, rows)}) batches, more than "
                    f"{MAX_EXACT}")
        return None

    def measure(self, trainer, pl_module) -> dict[str, float]:
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            return {}
        process = process_of(trainer, pl_module)
        x, y = pl_module.curvature_data()
        rows = len(x)
        size = self.batch_size(process, rows)
        batches = (batch.all_batches(rows, size) if self.exact
                   else batch.random_batches(rows, size, self.n_batches, self.generator))
        step_rows = process.batch_indices(trainer.global_step, rows) if process.minibatch else torch.arange(rows)
        model = pl_module.model
        with measuring(model):
            values = batch.estimate(model, pl_module.loss_fn, x, y, batches, exact=self.exact)
            step = batch.step_sharpness(model, pl_module.loss_fn, x, y, step_rows)
        return {"curvature/step_sharpness": step, **{f"curvature/{k}": v for k, v in values.items()}}

    def extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
