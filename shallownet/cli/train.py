"""`shallownet train [CONFIG] [key=value ...]`: one full-batch run of any registered model.

`train.resume=<run folder>` continues a stopped run in its folder from last.ckpt, with the folder's
config.yaml (only train.max_steps and output.progress may be changed).

Under DDP (torchrun / srun: every rank runs this command; Lightning's launcher: trainer.devices=N
trainer.strategy=ddp, and Lightning runs it again for ranks 1..N-1) only global rank 0 creates or
rewrites the run folder, writes summary.json and prints; see shallownet.distributed.
"""

from __future__ import annotations

from pathlib import Path

from shallownet.config import ConfigError, RunConfig, load_config, validate_run
from shallownet.run_folder import SUMMARY as SUMMARY_FILE
from shallownet.run_folder import (
    check_output,
    check_run_folder,
    first_rank,
    lock,
    provenance,
    read_summary,
    real_root,
    start_run,
    write_json,
)

SUMMARY = "one full-batch GD (or gradient-flow) run of any registered model, logged to TensorBoard and metrics.csv"
RESUMABLE = ("starting", "interrupted", "max_steps", "max_time")
RESUME_OVERRIDES = ("train.max_steps", "output.progress")


SCHEMA = RunConfig


def configure(config_path: str | None, overrides: list[str]):
    """The validated config, and the folder to resume in (None for a new run)."""
    cfg, resume_dir = load(config_path, overrides)
    check_output(cfg.output)
    return cfg, resume_dir


def load(config_path: str | None, overrides: list[str]):
    """The validated config, and the folder to resume in (None for a new run)."""
    resume = [item.partition("=")[2] for item in overrides if item.startswith("train.resume=")]
    if not resume or not resume[-1]:
        cfg = load_config(RunConfig, config_path, overrides)
        validate_run(cfg)
        return cfg, None
    run_dir = Path(resume[-1]).expanduser().resolve()  # a symlinked runs/<name>: the real folder, printed
    if config_path is not None:
        raise ConfigError("train.resume takes the config of the run folder; name no CONFIG file")
    for name in ("config.yaml", "last.ckpt", SUMMARY_FILE):
        if not (run_dir / name).is_file():
            raise ConfigError(f"config key 'train.resume': {run_dir} holds no {name}, so it is no run folder to resume")
    check_run_folder(run_dir)
    if first_rank():
        try:
            lock(run_dir)  # held until this process ends: a second writer is refused, naming this one
        except ConfigError as err:
            raise ConfigError(f"config key 'train.resume': {err}") from None
    try:
        status = read_summary(run_dir).get("status")
    except ConfigError as err:
        raise ConfigError(f"config key 'train.resume': {err}") from None
    if status not in RESUMABLE:
        raise ConfigError(f"config key 'train.resume': the run in {run_dir} ended {status}; only "
                          f"{', '.join(RESUMABLE)} runs can be continued")
    changes = [item for item in overrides if not item.startswith("train.resume=")]
    for item in changes:
        if item.partition("=")[0] not in RESUME_OVERRIDES:
            raise ConfigError(f"override {item!r}: a resumed run keeps its config; only "
                              f"{', '.join(RESUME_OVERRIDES)} may change")
    cfg = load_config(RunConfig, run_dir / "config.yaml", changes)
    validate_run(cfg)
    return cfg, run_dir


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, resume_dir = configure(config_path, overrides)
    from shallownet import distributed, interrupt, training  # heavy imports only once the input is known good
    from shallownet.cli import exit_status

    training.quiet_lightning()
    pieces = training.build(cfg)  # reads the data and builds the model: their errors come before the folder
    interrupt.install()
    with distributed.process_group(cfg.train.device):  # under torchrun / srun: rank 0 tells the folder
        main = distributed.is_main_process()
        if resume_dir is None:
            run_dir = distributed.run_folder(lambda: start_run(cfg))
        else:
            run_dir = resume_dir
        summary = training.run(cfg, run_dir, resume=resume_dir is not None, pieces=pieces)
    if main:
        summary["provenance"] = provenance()
        write_json(run_dir / SUMMARY_FILE, summary)
        root = run_dir.parent.parent if resume_dir is not None else real_root(cfg.output.root)  # the run's own
        print(training.describe(summary, run_dir, root))
    return exit_status(summary["status"])

