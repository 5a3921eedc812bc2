"""`shallownet sweep [CONFIG] [key=value ...]`: many GD runs over a grid of step size x initial scale."""

from __future__ import annotations

from shallownet.run_folder import check_output
from shallownet.sweep.grid import load_sweep_config

SUMMARY = "GD over a grid of step size x initial scale, the paper's Figure 3 (default configs/figure3.yaml)"
DEFAULT_CONFIG = "figure3.yaml"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg = load_sweep_config(config_path, overrides)
    check_output(cfg.output)
    from shallownet.sweep.runner import run_sweep  # heavy imports only once the input is known good

    return run_sweep(cfg)
