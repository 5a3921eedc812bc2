"""Callbacks of a whole run: its summary and hparams entry, periodic checkpoints, and stop requests."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from shallownet import interrupt
from shallownet.callbacks.dynamics import DynamicsMonitor
from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.sharpness import SHARPNESS
from shallownet.callbacks.tensorboard import find_writer, log_step
from shallownet.run_folder import WriteError
from shallownet.stop import CONVERGED, DIVERGED

# hparams session status per outcome: TensorBoard's hparams tab shows and filters on it
_STATUS = {CONVERGED: "STATUS_SUCCESS", DIVERGED: "STATUS_FAILURE"}
CONFIG_IN_CHECKPOINT = "shallownet_config"  # the run's resolved config: a resume checks config.yaml against it


class RunRecorder(L.Callback):
    """At the end of a run: the outcome, the init / final values the monitors logged (no extra solves),
    and the hparams entry (the config, the outcome as a filterable hparam, final loss / sharpness /
    steps as metrics, and a session status: success for converged, failure for diverged, unknown for
    budgets and interruptions). Put it after the monitors in the callback list.

    init / final are flat: the dynamics quantities by name (loss, residual, norm, ...), `sharpness`, and
    every other monitor's tags as they are (curvature/stability_threshold, balance/mean_abs, ...). A final
    value is only one measured at the final state: an interrupted run's dynamics are measured there, a
    monitor whose last measurement is older says nothing (its values are left out)."""

    def __init__(self, hparams: dict, dynamics: DynamicsMonitor, monitors: Sequence[PeriodicMonitor] = ()):
        self.hparams, self.dynamics, self.monitors = hparams, dynamics, list(monitors)
        self.outcome: str | None = None
        self.init: dict = {}
        self.final: dict = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outcome = pl_module.final_outcome()
        step = trainer.global_step
        self.init, self.final = {"sharpness": None}, {"sharpness": None}
        for monitor in (self.dynamics, *self.monitors):
            self.init.update(summary_names(monitor.first))
            if monitor.last_step == step:
                self.final.update(summary_names(monitor.last))
        if self.dynamics.last_step != step:  # interrupted: the monitors did not log this state (a resume will)
            scalars, _ = self.dynamics.quantities(pl_module)
            self.final.update(scalars)
        writer = find_writer(trainer)
        if writer is not None and trainer.is_global_zero:  # before Lightning finalizes the logger: one events
            self._write_hparams(writer, step, log_step(trainer, pl_module))  # file (other ranks': a stand-in)

    def _write_hparams(self, writer, steps: int, x: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {"hparams/final_loss": self.final.get("loss"), "hparams/final_sharpness": self.final["sharpness"],
                   "hparams/steps": float(steps), "hparams/converged": float(self.outcome == CONVERGED)}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        experiment, start, _ = hparams({**self.hparams, "outcome": self.outcome}, metrics)
        for summary in (experiment, start, _session_end(_STATUS.get(self.outcome, "STATUS_UNKNOWN"))):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, x)


def summary_names(values: dict[str, float]) -> dict[str, float]:
    """A run summary's names for logged tags: dynamics/<q> -> <q>, curvature/sharpness -> sharpness, the
    process/* clock left out (summary.json has steps and time of its own), every other tag as it is."""
    named = {}
    for tag, value in values.items():
        if tag.startswith("process/"):
            continue
        named["sharpness" if tag == SHARPNESS else tag.removeprefix("dynamics/")] = value
    return named


def _session_end(status: str):
    """The hparams plugin's session-end summary with the given status (torch's helper says success always)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status)),
        version=metadata.PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])


class PeriodicCheckpoint(L.Callback):
    """Every `every_n_steps` steps, the trainer's full state to `path` (written aside, then renamed, so a
    kill mid-write leaves the previous checkpoint whole); each checkpoint holds the run's config too."""

    def __init__(self, path: Path, every_n_steps: int, config: dict | None = None):
        self.path, self.every_n_steps, self.config = Path(path), every_n_steps, config
        self._saved_step: int | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.config is not None:
            checkpoint[CONFIG_IN_CHECKPOINT] = self.config

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._saved_step:
            self._saved_step = step
            save_checkpoint(trainer, self.path)


def save_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """The logs are flushed first: whatever a checkpoint holds, the logs hold too (a resume cuts them there).

    Every rank calls it (Lightning gathers the state and waits for all); only global rank 0 writes the file,
    so only there is it renamed into place."""
    for logger in trainer.loggers:
        logger.save()
    partial = path.with_name(path.name + ".partial")
    try:
        trainer.save_checkpoint(partial)
    except OSError as err:  # torch's writer names no file (a full disk, a file-size limit): name the checkpoint
        partial.unlink(missing_ok=True)
        raise WriteError(err.errno, err.strerror or str(err), str(path)) from None
    if trainer.is_global_zero:
        os.replace(partial, path)


class StopOnSignal(L.Callback):
    """Re-installs shallownet.interrupt's SIGINT / SIGTERM handlers once training starts: Lightning
    registers its own SIGTERM handler in fit(), which would end the run with an exception (and exit 0)
    instead of the clean `interrupted` outcome. A SIGTERM that came while Lightning's handler was in place
    (during fit's set-up) reached ours too (Lightning chains to it), so Lightning's flag is cleared: the
    module's stop rule ends the run as `interrupted` at its first step."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.install()
        connector = getattr(trainer, "_signal_connector", None)  # private: Lightning has no public switch
        if connector is not None and interrupt.requested() is not None:
            connector.received_sigterm = False
