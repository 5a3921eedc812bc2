"""`shallownet eos [CONFIG] [key=value ...]`: full-batch training at the edge of stability on a real net: the
governing sharpness of each process against its stability threshold, for several processes from one init."""

from __future__ import annotations

from shallownet.cli.compare import execute
from shallownet.compare import validate_compare
from shallownet.config import load_config
from shallownet.eos import EosConfig
from shallownet.run_folder import check_output

SUMMARY = "edge of stability on a real net: sharpness vs each process's threshold (configs/eos.yaml)"


SCHEMA = EosConfig


def configure(config_path: str | None, overrides: list[str]):
    cfg = load_config(SCHEMA, config_path, overrides)
    validate_compare(cfg)
    check_output(cfg.output)
    return cfg, None


def run(config_path: str | None, overrides: list[str]) -> int:
    return execute(configure(config_path, overrides)[0], report=report)


def report(cfg, run_dir, result: dict) -> None:
    """How close to its threshold each process's governing sharpness hovers, and eos.png."""
    from shallownet.eos import NEAR, hovering, save_eos_figure
    from shallownet.events import read_metrics
    from shallownet.stop import DIVERGED

    unit = result["time_unit"]
    for row in result["rows"]:
        metrics = read_metrics(run_dir / row["run"])
        if "curvature/sharpness_over_threshold" not in metrics:
            continue  # a process without a threshold (gradient flow), or the sharpness monitor off
        x, ratio = metrics["curvature/sharpness_over_threshold"]
        hover = row["hovering"] = hovering(x * unit, ratio)
        if row["outcome"] == DIVERGED:
            print(f"{row['run']}: diverged at t = {row['time']:.4g} (the ratios before are in its sub-run)")
        elif hover["reached_at"] is not None:
            print(f"{row['run']}: the sharpness reached {NEAR:g} x its threshold at t = {hover['reached_at']:.4g}; "
                  f"since then sharpness / threshold = {hover['median']:.3f} (median; range {hover['min']:.3f} - "
                  f"{hover['max']:.3f})")
        elif hover["max_before"] is not None:
            print(f"{row['run']}: the sharpness stayed below its threshold (at most {hover['max_before']:.3f} of it)")
        else:  # interrupted before a measurement after the start
            print(f"{row['run']}: no sharpness measured after the start ({row['outcome']} at step {row['steps']})")
    save_eos_figure(run_dir, result)
    print(f"figure: {run_dir / 'eos.png'}")
