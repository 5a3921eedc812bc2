"""The run machinery for any model: one config source, the trainer section, any logger, callback_metrics,
no hidden work (one operator per run, no extra solves, data placed once), quiet only in the CLI."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import lightning as L
import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from shallownet.compare import CompareConfig
from shallownet.config import OWNED_TRAINER_KEYS, ConfigError, RunConfig, TrainerConfig, load_config, validate_run
from shallownet.eos import EosConfig
from shallownet.figure1 import Figure1Config
from shallownet.sweep.grid import SweepConfig
from shallownet.training import build, fit, trainer_options
from tests.conftest import CONFIGS, read_summary

SCHEMAS = {"train": RunConfig, "compare": CompareConfig, "eos": EosConfig, "sweep": SweepConfig,
           "figure1": Figure1Config}


def flat_keys(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix[:-1]}
    return set().union(*(flat_keys(v, f"{prefix}{k}.") for k, v in node.items())) if node else {prefix[:-1]}


@pytest.mark.parametrize("command", SCHEMAS)
def test_each_shipped_config_equals_the_builtin_defaults_key_for_key(command):
    schema = SCHEMAS[command]
    defaults = OmegaConf.to_container(load_config(schema, None, []))
    path = CONFIGS / f"{command}.yaml"
    assert OmegaConf.to_container(load_config(schema, path, [])) == defaults
    assert flat_keys(yaml.safe_load(path.read_text())) == flat_keys(defaults)  # it shows every key


def test_defaults_do_not_depend_on_the_working_directory(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "shallownet")
    done = subprocess.run([exe, "sweep", "grid.lr.num=2", "grid.scale.num=2", "output.tensorboard=false",
                           f"output.root={tmp_path / 'runs'}"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = yaml.safe_load(next((tmp_path / "runs").rglob("config.yaml")).read_text())
    assert cfg == OmegaConf.to_container(load_config(SweepConfig, None, [
        "grid.lr.num=2", "grid.scale.num=2", "output.tensorboard=false", f"output.root={tmp_path / 'runs'}"]))
    assert cfg["grid"]["lr"]["stop"] == 2.0 and cfg["output"]["name"] == "figure3"  # the Figure-3 grid


def test_trainer_section_passes_lightning_parameters_and_refuses_the_keys_the_run_owns():
    parameters = inspect.signature(L.Trainer.__init__).parameters
    for name in [f.name for f in TrainerConfig.__dataclass_fields__.values()] + list(OWNED_TRAINER_KEYS):
        assert name in parameters, name
    cfg = load_config(RunConfig, None, ["trainer.deterministic=true", "train.dtype=float32"])
    validate_run(cfg)
    options = trainer_options(cfg)
    assert options["deterministic"] is True and options["precision"] == "32-true" and options["devices"] == 1
    for key, owner in OWNED_TRAINER_KEYS.items():
        with pytest.raises(ConfigError, match=f"trainer.{key}' is set by {owner}"):
            load_config(RunConfig, None, [f"trainer.{key}=1"])


def short_config(*overrides):
    cfg = load_config(RunConfig, None, ["train.max_steps=20", "train.tol=1e-300", "monitor.sharpness.every_n_steps=10",
                                        *overrides])
    validate_run(cfg)
    return cfg


@pytest.mark.filterwarnings("ignore")
def test_any_logger_gets_every_scalar_and_callback_metrics_serve_checkpointing(tmp_path):
    cfg = short_config()
    pieces = build(cfg)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="curvature/sharpness", mode="min",
                           every_n_train_steps=10, save_top_k=1)
    solves, operators = [], []
    solve = pieces.sharpness.tracker.solve

    def counting_solve(op, stop=None):
        solves.append(1)
        operators.append(op)
        return solve(op, stop=stop)

    pieces.sharpness.tracker.solve = counting_solve
    trainer = fit(pieces.module, pieces.datamodule, max_steps=20, callbacks=[*pieces.callbacks, best],
                  loggers=[CSVLogger(tmp_path, name="csv", version="")], trainer_options=trainer_options(cfg))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for tag in ("dynamics/residual", "dynamics/imbalance_ratio", "curvature/sharpness", "curvature/hvp_count"):
        assert tag in header, tag
    assert float(trainer.callback_metrics["curvature/sharpness"]) == pieces.sharpness.last["curvature/sharpness"]
    assert float(trainer.callback_metrics["dynamics/norm"]) == pieces.dynamics.last["dynamics/norm"]
    assert best.best_model_score is not None and best.best_model_path
    # no hidden work: one solve per logged step (0, 10, 20), one operator, the data where it was placed
    assert len(solves) == 3 and len(pieces.sharpness.history) == 3
    assert all(op is operators[0] for op in operators)
    assert pieces.module.curvature_data()[0] is pieces.module.data.x
    assert pieces.recorder.final["sharpness"] == pieces.sharpness.last["curvature/sharpness"]


def test_summary_has_no_sharpness_when_its_monitor_is_off(cli):
    code, _, err, (run_dir,) = cli("train", "train.max_steps=5", "monitor.sharpness.every_n_steps=0")
    assert code == 0, err
    summary = read_summary(run_dir)
    assert summary["init"]["sharpness"] is None and summary["final"]["sharpness"] is None
    assert summary["status"] == "max_steps" and summary["final"]["norm"] > 0


def test_importing_shallownet_leaves_logging_alone():
    code = ("import logging, lightning; before = logging.getLogger('lightning.pytorch').level; "
            "import shallownet.training, shallownet.cli.train; "
            "print(before, logging.getLogger('lightning.pytorch').level)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    before, after = done.stdout.split()
    assert before == after, done.stderr[-2000:]


def test_a_model_kind_is_chosen_by_name_and_unknown_kinds_are_refused():
    with pytest.raises(ConfigError, match="model.kind' must be one of .*scalar_linear"):
        load_config(RunConfig, None, ["model.kind=no_such_net"])
    with pytest.raises(ConfigError, match="unknown config key 'model.depth'"):
        load_config(RunConfig, None, ["model.depth=3"])  # scalar_linear has no depth


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_is_a_valid_override_of_its_command(path):
    """configs/experiments/*.yaml are sweeps listing only what differs; each loads, validates and names its
    own output folder."""
    from shallownet.sweep.grid import validate

    cfg = load_config(SweepConfig, path, [])
    validate(cfg)
    assert cfg.output.name == path.stem
    assert OmegaConf.to_container(cfg) != OmegaConf.to_container(load_config(SweepConfig, None, []))


@pytest.mark.parametrize("command", ["train", "compare", "eos"])
def test_unreadable_data_is_refused_before_the_run_folder(cli, tmp_path, command):
    """Data and model are built before the folder exists: a malformed CIFAR-10 file writes nothing."""
    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (root / name).write_bytes(b"not a pickle")
    code, out, err, dirs = cli(command, "model.kind=mlp", "data.kind=cifar10", f"data.root={root}")
    assert code == 2 and "malformed" in err and len(err.strip().splitlines()) == 1
    assert dirs == [] and out == ""
