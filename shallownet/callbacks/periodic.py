"""PeriodicMonitor: the base of every shallownet monitor (when to measure, where to draw, what to keep).

When: on the process's step count (trainer.global_step): the run's first state (step 0 of a fresh run),
every step that is a multiple of every_n_steps, and the state the run ends in (an interrupted run leaves
that to its resume). Never twice at one step, also across a resume: the last measured step is part of
the checkpoint. A final measurement off the cadence (a run that reached its budget at step 7 of a
cadence of 5) is left out of the checkpoint: it holds the monitor's state from before it and the tags it
logged (OFF_CADENCE), which a resume with a larger budget removes from the logs, so the continued run logs
every value of an uninterrupted one, bit for bit. Where: the x-axis of log_step (the shared time axis of
compare), which only decides where
a value is drawn, never when it is measured. What: `first` holds the first values logged, `last` the
values of the last measurement ({} when nothing could be measured there, e.g. non-finite parameters) and
`last_step` its step: a run's summary takes its init / final from them.

A monitor implements measure(trainer, pl_module) -> {tag: value}, and refusal(pl_module, process) -> why
it does not apply (None when it does), which runs refuse before any work and which train start checks
again for a library user's module.
"""

from __future__ import annotations

import copy

import lightning as L

from shallownet import interrupt
from shallownet.callbacks.logging import log_values
from shallownet.callbacks.tensorboard import log_step
from shallownet.processes.base import Process, process_of
from shallownet.stop import INTERRUPTED

OFF_CADENCE = "off_cadence"  # in a monitor's checkpointed state: {"x": step, "tags": [...]} of its final log


class PeriodicMonitor(L.Callback):
    """Base class: cadence, de-duplication, resume state and the final log of a monitor."""

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.last_step: int | None = None
        self._checkpointed: dict | None = None  # the state a resume goes on from, when not the current one

    # --- what a monitor implements ----------------------------------------------------------------------

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """{tag: value} at the current state ({} when there is nothing to log there)."""
        raise NotImplementedError

    def refusal(self, pl_module: L.LightningModule, process: Process) -> str | None:
        """Why this monitor cannot measure this module under this process; None when it can."""
        return None

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called at train start, after the check and before the first log."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # --- the machinery ----------------------------------------------------------------------------------

    def check(self, pl_module: L.LightningModule, process: Process) -> None:
        why = self.refusal(pl_module, process)
        if why is not None:
            raise ValueError(f"{type(self).__name__}: {why}")

    def due(self, step: int) -> bool:
        return step % self.every_n_steps == 0 and step != self.last_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._checkpointed = None
        self.check(pl_module, process_of(trainer, pl_module))
        self.start(trainer, pl_module)
        if self.due(trainer.global_step):
            self.record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.due(trainer.global_step):
            self.record(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if getattr(pl_module, "outcome", None) == INTERRUPTED or step == self.last_step:
            return
        if step % self.every_n_steps == 0:
            self.record(trainer, pl_module)
            return
        before = copy.deepcopy(self.state_dict())  # an uninterrupted longer run never measures this state
        logged = self.record(trainer, pl_module)
        self._checkpointed = {**before, OFF_CADENCE: {"x": log_step(trainer, pl_module), "tags": sorted(logged)}}

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Measure now and log at the current state's x-axis step (nothing, when a stop request cut the
        measurement short: the state counts as unmeasured, so a resume measures it); the values logged."""
        previous, self.last_step = self.last_step, trainer.global_step
        try:
            self.last = values = self.measure(trainer, pl_module)
        except interrupt.Stopped:
            self.last_step = previous
            return {}
        if not values:
            return {}
        log_values(trainer, values, log_step(trainer, pl_module))
        if not self.first:
            self.first = values
        return values

    def state_dict(self) -> dict:
        if self._checkpointed is not None:
            return self._checkpointed
        return {"first": self.first, "last": self.last, "last_step": self.last_step, **self.extra_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first, self.last, self.last_step = state_dict["first"], state_dict["last"], state_dict["last_step"]
        self.load_extra_state(state_dict)
