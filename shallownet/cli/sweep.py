"""`shallownet sweep [CONFIG] [key=value ...]`: many GD runs over a grid of step size x initial scale.

Without a model: the shallow net (or the scalar chain) on its exact few-numbers-per-run engines, the paper's
Figure 3 (shallownet.sweep.grid). Naming one (`model.kind=mlp`, or a `model:` section in CONFIG): a
registered real net, every cell trained at once on the vmapped engine, the phase map
(shallownet.sweep.real_grid).
"""

from __future__ import annotations

from pathlib import Path

from shallownet.config import load_config, read_yaml
from shallownet.run_folder import check_output
from shallownet.sweep import real_grid
from shallownet.sweep.grid import SweepConfig, validate

SUMMARY = ("GD over a grid of step size x initial scale: the paper's Figure 3 (defaults: configs/sweep.yaml), or "
           "with model.kind=... a real net's phase map")


SCHEMA = SweepConfig
VARIANTS = {"model.kind=mlp": real_grid.RealSweepConfig}  # other schemas the arguments can choose (--help, docs)


def schema_for(config_path: str | None, overrides: list[str]) -> type:
    """The real-net schema when the arguments name a model (a model.* override or a `model:` section in CONFIG)."""
    named = any(item.partition("=")[0].split(".")[0] == "model" for item in overrides)
    if not named and config_path is not None and Path(config_path).is_file():
        named = "model" in read_yaml(Path(config_path))
    return real_grid.RealSweepConfig if named else SweepConfig


def configure(config_path: str | None, overrides: list[str]):
    schema = schema_for(config_path, overrides)
    cfg = load_config(schema, config_path, overrides)
    (real_grid.validate if schema is real_grid.RealSweepConfig else validate)(cfg)
    check_output(cfg.output)
    return cfg, None


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, _ = configure(config_path, overrides)
    from shallownet import interrupt

    interrupt.start_up_over()
    if "model" in cfg:
        from shallownet.sweep.real_runner import run_real_sweep  # heavy imports only once the input is known good

        return run_real_sweep(cfg)
    from shallownet.sweep.runner import run_sweep

    return run_sweep(cfg)
