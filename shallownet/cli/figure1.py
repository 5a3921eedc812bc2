"""`shallownet figure1 [CONFIG] [key=value ...]`: the paper's Figure 1 (d = 1) as PNG and in TensorBoard."""

from __future__ import annotations

from shallownet.config import load_config
from shallownet.figure1 import Figure1Config, validate_figure1
from shallownet.run_folder import check_output, provenance, start_run, write_json

SUMMARY = "the paper's Figure 1: GD and GF paths in the (a, b) plane for d = 1 (defaults: configs/figure1.yaml)"

SCHEMA = Figure1Config


def configure(config_path: str | None, overrides: list[str]):
    cfg = load_config(SCHEMA, config_path, overrides)
    validate_figure1(cfg)
    check_output(cfg.output)
    return cfg, None


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, _ = configure(config_path, overrides)
    from shallownet import interrupt
    from shallownet.cli import exit_status
    from shallownet.figure1 import make_figure1
    from shallownet.stop import INTERRUPTED

    interrupt.install()  # a stop request ends the path being computed; the later ones end at their start
    run_dir = start_run(cfg)
    result = make_figure1(cfg, run_dir)
    status = INTERRUPTED if any(path["outcome"] == INTERRUPTED for path in result["paths"]) else "done"
    result.update(status=status, provenance=provenance())
    write_json(run_dir / "summary.json", result)
    width = max(len(path["process"]) for path in result["paths"])
    for path in result["paths"]:
        print(f"init {path['init']}: {path['process']:{width}s} {path['outcome']:9s} in {path['steps']:4d} steps, "
              f"Q(T)/Q(0) = {path['imbalance_ratio']:.4g}, lam(T) = {path['norm']:.6g}")
    print(f"figure: {result['png']}\nview it: tensorboard --logdir {run_dir} (IMAGES tab)")
    return exit_status(status)
