"""`shallownet sweep [CONFIG] [key=value ...]`: many GD runs over a grid of step size x initial scale."""

from __future__ import annotations

from shallownet.config import load_config
from shallownet.run_folder import check_output
from shallownet.sweep.grid import SweepConfig, validate

SUMMARY = "GD over a grid of step size x initial scale, the paper's Figure 3 (defaults: configs/sweep.yaml)"


SCHEMA = SweepConfig


def configure(config_path: str | None, overrides: list[str]):
    cfg = load_config(SCHEMA, config_path, overrides)
    validate(cfg)
    check_output(cfg.output)
    return cfg, None


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, _ = configure(config_path, overrides)
    from shallownet import interrupt
    from shallownet.sweep.runner import run_sweep  # heavy imports only once the input is known good

    interrupt.start_up_over()
    return run_sweep(cfg)
