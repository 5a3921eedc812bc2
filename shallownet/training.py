"""Training runs. `fit` runs built pieces (module, data, callbacks, loggers) in an ordinary Lightning Trainer;
`build` assembles those pieces from a validated config and `run` trains them into a run folder.

    pieces = build(cfg)                                   # model, data, loss by name (shallownet.registry)
    trainer = fit(pieces.module, pieces.datamodule, max_steps=..., callbacks=pieces.callbacks, loggers=...)
    summary = run(cfg, run_dir)                           # the same, with the run folder's loggers and files
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from shallownet import distributed, registry
from shallownet.callbacks.dynamics import DynamicsMonitor
from shallownet.callbacks.periodic import PeriodicMonitor
from shallownet.callbacks.run import (
    CONFIG_IN_CHECKPOINT,
    PeriodicCheckpoint,
    RunRecorder,
    StopOnSignal,
    save_checkpoint,
)
from shallownet.callbacks.sharpness import SharpnessMonitor
from shallownet.checks import ConfigError
from shallownet.curvature.probe import probes_of
from shallownet.data import FullBatchDataModule
from shallownet.losses import LOSSES
from shallownet.module import FullBatchModule
from shallownet.stop import StopRule

CHECKPOINT = "last.ckpt"
METRICS = "metrics.csv"
RESUME_MAY_CHANGE = ("train.max_steps", "train.resume", "output.")  # the rest of a resumed run's config is fixed


def quiet_lightning() -> None:
    """Lightning's banners and hints are noise in a CLI that prints its own summary (the CLI calls this;
    importing shallownet changes no logging)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*IterableDataset. has .__len__. defined.*", ".*LeafSpec.*",
                    ".*resuming from a checkpoint that ended before the epoch ended.*"):
        warnings.filterwarnings("ignore", message=message)


def make_trainer(*, max_steps: int, callbacks: Sequence[L.Callback] = (), loggers: Sequence = (),
                 trainer_options: dict | None = None, progress: bool = False) -> L.Trainer:
    """The Trainer of a full-batch run: at most max_steps optimizer steps, no validation, no throttling."""
    callbacks = list(callbacks)
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, max_steps // 100)))
    return L.Trainer(
        max_steps=max_steps, max_epochs=-1, logger=list(loggers) or False, callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks), enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1, **(trainer_options or {}),
    )


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, *, max_steps: int,
        callbacks: Sequence[L.Callback] = (), loggers: Sequence = (), trainer_options: dict | None = None,
        ckpt_path: str | Path | None = None, progress: bool = False) -> L.Trainer:
    """Train `module` for at most max_steps optimizer steps (it may stop itself earlier)."""
    trainer = make_trainer(max_steps=max_steps, callbacks=callbacks, loggers=loggers,
                           trainer_options=trainer_options, progress=progress)
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path),
                weights_only=True)  # a checkpoint is data: never unpickle code from a user path
    return trainer


# --- building the pieces from a config ----------------------------------------------------------------

@dataclass
class Pieces:
    module: FullBatchModule
    datamodule: FullBatchDataModule
    monitors: dict[str, PeriodicMonitor]  # by registry name: the monitors the config switched on
    recorder: RunRecorder
    callbacks: list = field(default_factory=list)

    @property
    def dynamics(self) -> DynamicsMonitor:
        return self.monitors["dynamics"]

    @property
    def sharpness(self) -> SharpnessMonitor | None:
        return self.monitors.get("sharpness")


def build(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> Pieces:
    """Model, data, loss, process and monitors by name (shallownet.registry), and the stop rule of one run.

    A monitor that does not apply to the model or the process is refused here (ConfigError naming the key
    that switched it on), before anything is written."""
    model_kind = registry.model_kind(cfg.model.kind)
    dtype = getattr(torch, cfg.train.dtype)
    data = registry.data_kind(cfg.data.kind).build(cfg, dtype)
    model = model_kind.build(cfg, data)
    t = cfg.train
    _check_batch_statistics(model, t.chunk_size, len(data.x))
    _check_distributed(cfg, model, len(data.x))
    rule = StopRule(t.tol, t.divergence_norm, t.max_steps, float("inf") if t.max_time is None else t.max_time)
    process = registry.process_kind(cfg.optim.method).build(cfg.optim)
    why = process.refusal(len(data.x))
    if why is not None:
        raise ConfigError(why)
    module = FullBatchModule(model, LOSSES[cfg.loss or model_kind.loss], process, rule,
                             convergence=t.convergence or model_kind.convergence, chunk_size=t.chunk_size,
                             time_unit=t.time_unit)
    module.use_data(data)
    why = process.curvature_refusal(module._curvature_operator) if process.needs_curvature else None
    if why is not None:
        raise ConfigError(why)
    monitors = build_monitors(cfg, module)
    recorder = RunRecorder(flat_hparams(cfg), monitors["dynamics"],
                           [m for name, m in monitors.items() if name != "dynamics"])
    callbacks = [*monitors.values(), *extra_callbacks, recorder]
    return Pieces(module, FullBatchDataModule(data, t.max_steps), monitors, recorder, callbacks)


def build_monitors(cfg: DictConfig, module: FullBatchModule) -> dict[str, PeriodicMonitor]:
    """Every registered monitor that cfg.monitor switches on, checked against the model and the process."""
    monitors = {}
    for name in registry.known("monitor"):
        section = cfg.monitor[name]
        monitor = registry.lookup("monitor", name).build(cfg, section)
        if monitor is None:
            continue
        why = monitor.refusal(module, module.process)
        if why is not None:
            key = f"monitor.{name}.every_n_steps"
            raise ConfigError(f"config key '{key}' switches on the {name} monitor, which does not apply to "
                              f"model.kind {cfg.model.kind} with optim.method {cfg.optim.method}: {why}")
        monitors[name] = monitor
    return {"dynamics": monitors.pop("dynamics"), **monitors}


def _check_batch_statistics(model, chunk_size: int | None, rows: int) -> None:
    """BatchNorm nets train on full-batch statistics: chunks would make each chunk a batch of its own, a
    different loss from the full-batch one that the monitors and the curvature measure."""
    from shallownet.curvature.operators import batch_statistics_module

    found = batch_statistics_module(model)
    if found is not None and chunk_size is not None and chunk_size < rows:
        raise ConfigError(f"config key 'train.chunk_size' must be null for a net with BatchNorm ({found[0]}): its "
                          "batch statistics are full-batch statistics, which chunks would change")


def planned_processes(cfg: DictConfig) -> int:
    """How many processes the Trainer of this config runs: devices x nodes."""
    options = trainer_options(cfg)
    devices = options["devices"]
    return (len(devices) if isinstance(devices, list) else int(devices)) * options["num_nodes"]


def _check_distributed(cfg: DictConfig, model, rows: int) -> None:
    """What Lightning's DDP can run exactly here (shallownet.distributed), refused before anything is written."""
    from shallownet.curvature.operators import batch_statistics_module

    tr = cfg.trainer
    if tr.strategy not in distributed.STRATEGIES:
        raise ConfigError(f"config key 'trainer.strategy' must be one of {', '.join(distributed.STRATEGIES)}, got "
                          f"{tr.strategy!r}: full-batch runs split the data over DDP processes started as scripts "
                          "(torchrun, srun or Lightning's own launcher)")
    environment = distributed.external_environment()
    if tr.num_nodes > 1 and environment is None:
        raise ConfigError(f"config key 'trainer.num_nodes' is {tr.num_nodes}: start runs on several nodes with "
                          "torchrun or srun (Lightning's own launcher starts the processes of one node)")
    world = planned_processes(cfg)
    if environment is not None and environment.world_size() != world:
        raise ConfigError(f"config key 'trainer.devices': the launcher started {environment.world_size()} processes "
                          f"but trainer.devices x trainer.num_nodes (with train.device={cfg.train.device}) make "
                          f"{world}; leave trainer.devices null or match them")
    if world == 1:
        return
    found = batch_statistics_module(model)
    if found is not None:
        raise ConfigError(f"a net with BatchNorm ({found[0]}) cannot run on {world} processes: each would normalise "
                          "with the statistics of its own shard, not of the full batch; use one process (trainer."
                          "devices=1) or a net without BatchNorm")
    if rows < world:
        raise ConfigError(f"the data has {rows} training rows, fewer than the {world} processes: every process "
                          "needs at least one (fewer trainer.devices)")


def trainer_options(cfg: DictConfig) -> dict:
    """The Trainer's arguments from the config. Under torchrun or srun with several processes, a
    trainer.devices left null, trainer.num_nodes 1 and strategy auto are taken from the launcher (processes
    per node, nodes, ddp), so `torchrun --nproc_per_node=N ... shallownet train` needs no trainer keys."""
    device, tr = cfg.train.device, cfg.trainer
    index = device.partition(":")[2]
    devices, num_nodes, strategy = tr.devices, tr.num_nodes, tr.strategy
    layout = distributed.launched_layout() if distributed.external_environment() is not None else None
    if layout is not None and not index:
        devices = devices or layout[0]
        num_nodes = layout[1] if num_nodes == 1 else num_nodes
        strategy = "ddp" if strategy == "auto" else strategy
    options = {
        "accelerator": "cpu" if device == "cpu" else "gpu",
        "devices": [int(index)] if index else (devices or 1),
        "precision": "64-true" if cfg.train.dtype == "float64" else "32-true",
        "num_nodes": num_nodes, "strategy": strategy, "detect_anomaly": tr.detect_anomaly,
    }
    options.update({key: tr[key] for key in ("deterministic", "benchmark") if tr[key] is not None})
    return options


class RunTensorBoardLogger(TensorBoardLogger):
    """The run folder is the log folder; the config lives in config.yaml and the hparams entry is written
    by RunRecorder, so no hparams.yaml. Writes on global rank 0 only, like every Lightning logger."""

    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        pass

    @rank_zero_only
    def save(self) -> None:
        self.experiment.flush()


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run appends to it instead."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class RunCSVLogger(CSVLogger):
    """metrics.csv: every scalar at full float64 precision (TensorBoard stores float32)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def log_hyperparams(self, params=None) -> None:
        pass


def run_loggers(run_dir: Path) -> list:
    return [RunTensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False),
            RunCSVLogger(save_dir=str(run_dir), name="", version="")]


def run(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[L.Callback] = (), resume: bool = False,
        pieces: Pieces | None = None) -> dict:
    """Train one run into run_dir (TensorBoard events, metrics.csv, last.ckpt); returns the summary.

    pieces: already built from cfg (the CLI builds them before it creates the run folder, so a data file
    that cannot be read writes nothing). resume: continue from run_dir/last.ckpt, after check_resume has
    found everything in order (then config.yaml is rewritten with cfg and the logs past the checkpoint's
    step are cut off, so each step is logged once).

    Under DDP every rank calls this with the same run_dir (shallownet.distributed.run_folder); only global
    rank 0 writes to it. Processes that Lightning's own launcher starts find run_dir in their environment.
    """
    from shallownet.run_folder import apply_truncation, claim, replace_text

    pieces = pieces or build(cfg, extra_callbacks)
    checkpoint = run_dir / CHECKPOINT
    logs = check_resume(cfg, run_dir, pieces) if resume else []
    callbacks = [*pieces.callbacks, PeriodicCheckpoint(checkpoint, cfg.train.checkpoint_every_n_steps,
                                                       OmegaConf.to_container(cfg, resolve=True)), StopOnSignal()]
    trainer = make_trainer(max_steps=cfg.train.max_steps, callbacks=callbacks, loggers=run_loggers(run_dir),
                           trainer_options=trainer_options(cfg), progress=cfg.output.progress and sys.stderr.isatty())
    distributed.check_trainer(trainer)
    if resume and trainer.is_global_zero:
        claim(run_dir)  # the lock's holder names itself once it writes (cli.train took the lock)
        replace_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # train.max_steps may change
        apply_truncation(logs)
    start = time.perf_counter()
    with distributed.children_find(run_dir, trainer):
        trainer.fit(pieces.module, datamodule=pieces.datamodule, ckpt_path=str(checkpoint) if resume else None,
                    weights_only=True)  # a checkpoint is data: never unpickle code from a user path
    wall = time.perf_counter() - start
    save_checkpoint(trainer, checkpoint)
    return summarise(cfg, pieces, trainer, wall)


def check_resume(cfg: DictConfig, run_dir: Path, pieces: Pieces) -> list:
    """Everything a resume of run_dir rests on, checked before it writes one byte: the checkpoint reads, was
    written with this config (but for RESUME_MAY_CHANGE) and fits the built model, the budget is not spent
    and the logs read. Returns the logs cut back to the checkpoint (run_folder.plan_truncation); ConfigError
    naming what does not fit."""
    from shallownet.run_folder import plan_truncation

    path = run_dir / CHECKPOINT
    key = "config key 'train.resume'"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        step, weights = int(state["global_step"]), dict(state["state_dict"])
    except Exception as err:  # empty, truncated, corrupt or foreign files fail in many ways
        reason = str(err).strip().split(". ")[0].splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}: {path} cannot be read as a checkpoint ({reason}); the run folder is left "
                          "as it is") from None
    saved = state.get(CONFIG_IN_CHECKPOINT)
    if saved is not None:
        now, then = _flat(OmegaConf.to_container(cfg, resolve=True)), _flat(saved)
        for name in sorted(set(now) | set(then)):
            if not name.startswith(RESUME_MAY_CHANGE) and now.get(name) != then.get(name):
                raise ConfigError(f"{key}: {run_dir / 'config.yaml'} says {name}={now.get(name)!r} but the "
                                  f"checkpoint was written with {then.get(name)!r}; a resumed run keeps its config")
    expected = pieces.module.state_dict()
    for name in sorted(set(expected) | set(weights)):
        if name not in expected or name not in weights or expected[name].shape != weights[name].shape:
            what = "not in the model" if name not in expected else "missing" if name not in weights \
                else f"of shape {tuple(weights[name].shape)}, the model's is {tuple(expected[name].shape)}"
            raise ConfigError(f"{key}: the checkpoint {path} does not fit model.kind {cfg.model.kind} as "
                              f"configured: its {name} is {what}")
    if step >= cfg.train.max_steps:
        raise ConfigError(f"config key 'train.max_steps': the run in {run_dir} has taken its {step} steps "
                          f"(train.max_steps={cfg.train.max_steps}); continue it with a larger budget: shallownet "
                          f"train train.resume={run_dir} train.max_steps={2 * max(step, 1)}")
    return plan_truncation(run_dir, int(state.get("x_step", step)), off_cadence(state))


def off_cadence(state: dict) -> set[str]:
    """The tags whose last value a checkpoint's monitors logged off their cadence at its final state
    (PeriodicMonitor): an uninterrupted run has no such value, so a resume removes it from the logs."""
    from shallownet.callbacks.periodic import OFF_CADENCE

    callbacks = state.get("callbacks") or {}
    return {tag for saved in callbacks.values() if isinstance(saved, dict) and OFF_CADENCE in saved
            for tag in saved[OFF_CADENCE]["tags"]}


def _flat(node, prefix: str = "") -> dict:
    """A nested config as {dotted key: value} (lists as values)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def summarise(cfg: DictConfig, pieces: Pieces, trainer: L.Trainer, wall: float) -> dict:
    module, recorder, process = pieces.module, pieces.recorder, pieces.module.process
    steps = int(trainer.global_step)
    return {
        "status": recorder.outcome, "steps": steps, "model": cfg.model.kind, "method": process.method,
        "process": process.describe(), "identities": process.identities, "eta": process.lr, "time": process.time(steps),
        "stability_threshold": process.threshold(), **process.work(steps),
        "phi": module.data.target, "width": cfg.model.get("width"),
        "seed": cfg.model.init.seed if "init" in cfg.model else None,
        "tol": cfg.train.tol, "convergence": module.convergence, "wall_time_s": wall,
        "init": recorder.init, "final": recorder.final,
        "hvp_probe": probes_of(module),  # [] when no curvature monitor ran (shallownet.curvature.probe)
    }


def flat_hparams(cfg: DictConfig) -> dict:
    """Scalar config entries as dotted keys (TensorBoard's hparams tab takes no lists or nesting)."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif value is not None and not isinstance(value, list):
                flat[f"{prefix}{key}"] = value
    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def describe(summary: dict, run_dir: Path, root: str) -> str:
    """The short human summary printed at the end of a run."""
    final = summary["final"]
    error = f"|eps| = {abs(final['residual']):.3g}" if "residual" in final else f"loss = {final.get('loss'):.3g}"
    outcome = {
        "converged": f"converged in {summary['steps']} steps ({summary['convergence']} <= {summary['tol']:g})",
        "diverged": f"DIVERGED after {summary['steps']} steps (non-finite values or runaway norm)",
        "max_steps": f"not converged within {summary['steps']} steps ({error})",
        "max_time": f"not converged within time {summary['time']:g} ({error})",
        "interrupted": f"INTERRUPTED after {summary['steps']} steps ({error}); resume with "
                       f"shallownet train train.resume={run_dir}",
    }[summary["status"]]
    sharpness = "off" if final.get("sharpness") is None else f"{final['sharpness']:.6g}"
    preconditioned = final.get("curvature/preconditioned_sharpness")
    if preconditioned is not None:
        sharpness += f", preconditioned {preconditioned:.6g}"
    threshold = summary["stability_threshold"]
    threshold = f" (stability threshold of {summary['method']}: {threshold:.6g})" if threshold else ""
    norm = f"final norm = {final['norm']:.6g}, " if "norm" in final else ""
    return "\n".join([
        f"outcome: {outcome}",
        f"{norm}sharpness = {sharpness}{threshold}; wall time {summary['wall_time_s']:.2f} s",
        f"run folder: {run_dir}",
        f"view it: tensorboard --logdir {root}",
    ])
