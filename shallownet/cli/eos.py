"""`shallownet eos [CONFIG] [key=value ...]`: full-batch GD at several step sizes on a real net, the
sharpness against 2/eta (edge of stability), and GD against gradient flow when gf.enabled=true."""

from __future__ import annotations

from shallownet.cli.compare import execute
from shallownet.config import load_config
from shallownet.eos import EosConfig

SUMMARY = "edge of stability on a real net: sharpness vs 2/eta for several step sizes (configs/eos.yaml)"


def run(config_path: str | None, overrides: list[str]) -> int:
    return execute(load_config(EosConfig, config_path, overrides), report=report)


def report(cfg, run_dir, result: dict) -> None:
    """How close to 2/eta each GD run's sharpness hovers, and eos.png."""
    from shallownet.compare import run_name
    from shallownet.eos import NEAR, eos_figure, gd_steps, hovering
    from shallownet.events import read_metrics
    from shallownet.plots import save_figure

    for row in result["rows"]:
        if row["eta"] is None:
            continue
        steps, sharpness = read_metrics(run_dir / run_name(row["eta"]))["curvature/sharpness"]
        hover = row["hovering"] = hovering(gd_steps(steps, row["eta"], result["time_unit"]), sharpness, row["eta"])
        if hover["reached_at"] is not None:
            print(f"{row['run']}: S reached {NEAR:g} x 2/eta at step {hover['reached_at']}; since then eta*S/2 = "
                  f"{hover['median']:.3f} (median; range {hover['min']:.3f} - {hover['max']:.3f})")
        else:
            print(f"{row['run']}: S stayed below 2/eta (at most {hover['max_before']:.3f} of it)")
    save_figure(eos_figure(run_dir, list(cfg.gd.lrs), result["time_unit"]), run_dir / "eos.png", dpi=120)
    result["figure"] = "eos.png"
    print(f"figure: {run_dir / 'eos.png'}")
