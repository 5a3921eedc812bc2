"""One full-batch run of the shallow net inside an ordinary Lightning Trainer, from a validated config."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from shallownet.callbacks.dynamics import DynamicsMonitor
from shallownet.callbacks.sharpness import SharpnessMonitor
from shallownet.data import FullBatchDataModule, regression_points
from shallownet.model import ScalarLinearNet, initial_vectors
from shallownet.module import ShallowNetModule
from shallownet.optim import GradientDescent

QUANTITY_KEYS = ("loss", "residual", "norm", "imbalance", "imbalance_norm", "sharpness")


def quiet_lightning() -> None:
    """Lightning's banners and hints are noise in a CLI that prints its own summary."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def build_model(cfg: DictConfig) -> ScalarLinearNet:
    init = cfg.model.init
    a0, b0 = initial_vectors(cfg.model.width, init.scheme, init.scale, init.seed, init.imbalance,
                             init.a0, init.b0, dtype=getattr(torch, cfg.train.dtype))
    return ScalarLinearNet(a0, b0)


def build_data(cfg: DictConfig) -> FullBatchDataModule:
    x, y = regression_points(cfg.data.n_points, cfg.model.phi, cfg.data.noise, cfg.data.seed,
                             dtype=getattr(torch, cfg.train.dtype))
    return FullBatchDataModule(x, y, steps_per_epoch=cfg.train.max_steps)


class Endpoints(L.Callback):
    """Records state, loss and sharpness at the start and end of a run (for summary.json), and puts
    the config with the real final loss and sharpness into TensorBoard's hparams tab."""

    def __init__(self, sharpness: SharpnessMonitor, hparams: dict):
        self.sharpness = sharpness
        self.hparams = hparams
        self.init: dict[str, float] = {}
        self.final: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.init = self._measure(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.final = self._measure(pl_module)
        if trainer.logger is not None:  # before Lightning finalizes the logger, so one events file
            trainer.logger.log_hyperparams(self.hparams, {
                "hparams/final_loss": self.final["loss"], "hparams/final_sharpness": self.final["sharpness"],
                "hparams/steps": trainer.global_step,
            })

    def _measure(self, pl_module: ShallowNetModule) -> dict[str, float]:
        values = pl_module.state()
        with torch.no_grad():
            values["loss"] = float(pl_module.full_batch_loss())
        finite = all(torch.isfinite(p).all() for p in pl_module.parameters())
        values["sharpness"] = float(self.sharpness.measure(pl_module).value) if finite else float("nan")
        return {key: values[key] for key in QUANTITY_KEYS}


def fit(cfg: DictConfig, log_dir: Path, make_optimizer: Callable | None = None,
        extra_callbacks: Sequence[L.Callback] = (), module_cls: type = ShallowNetModule) -> dict:
    """Train one shallow net as `cfg` says, logging to TensorBoard in `log_dir`; returns the summary.

    `make_optimizer(params)` defaults to GD with step cfg.optim.lr; gradient flow passes its own.
    """
    quiet_lightning()
    if make_optimizer is None:
        def make_optimizer(params):
            return GradientDescent(params, lr=cfg.optim.lr)
    data = build_data(cfg)
    module = module_cls(build_model(cfg), phi=data.phi, tol=cfg.train.tol, make_optimizer=make_optimizer,
                        divergence_norm=cfg.train.divergence_norm)
    sharpness = SharpnessMonitor(every_n_steps=cfg.monitor.sharpness.every_n_steps,
                                 tol=cfg.monitor.sharpness.tol, max_iter=cfg.monitor.sharpness.max_iter)
    endpoints = Endpoints(sharpness, _flat_hparams(cfg))
    callbacks = [DynamicsMonitor(cfg.monitor.every_n_steps), sharpness, endpoints, *extra_callbacks]
    show_progress = sys.stderr.isatty()
    if show_progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.train.max_steps // 100)))
    logger = TensorBoardLogger(save_dir=str(log_dir), name="", version="", default_hp_metric=False)
    device = cfg.train.device
    trainer = L.Trainer(
        max_steps=cfg.train.max_steps, max_epochs=-1, logger=logger, callbacks=callbacks,
        accelerator="cpu" if device == "cpu" else "gpu",
        devices=[int(device.partition(":")[2] or 0)] if device != "cpu" else 1,
        precision="64-true" if cfg.train.dtype == "float64" else "32-true",
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=show_progress,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - start
    trainer.save_checkpoint(log_dir / "last.ckpt")
    summary = {
        "status": module.outcome, "steps": int(trainer.global_step), "eta": cfg.optim.lr, "phi": data.phi,
        "width": cfg.model.width, "seed": cfg.model.init.seed, "tol": cfg.train.tol,
        "wall_time_s": wall, "init": endpoints.init, "final": endpoints.final,
    }
    return summary


def _flat_hparams(cfg: DictConfig) -> dict:
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
    left = f"|eps| = {abs(final['residual']):.3g}"
    outcome = {
        "converged": f"converged in {summary['steps']} steps (|eps| <= {summary['tol']:g})",
        "diverged": f"DIVERGED after {summary['steps']} steps (non-finite values or runaway norm)",
        "max_steps": f"not converged within {summary['steps']} steps ({left})",
        "max_time": f"not converged within time {summary.get('time', float('nan')):g} ({left})",
    }[summary["status"]]
    return "\n".join([
        f"outcome: {outcome}",
        f"final norm lambda = {final['norm']:.6g}, sharpness = {final['sharpness']:.6g} "
        f"(2/eta = {2 / summary['eta']:.6g}); wall time {summary['wall_time_s']:.2f} s",
        f"run folder: {run_dir}",
        f"view it: tensorboard --logdir {root}",
    ])
