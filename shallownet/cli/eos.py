"""`shallownet eos [CONFIG] [key=value ...]`: full-batch GD at several step sizes on a real net, the
sharpness against 2/eta (edge of stability), and GD against gradient flow when gf.enabled=true."""

from __future__ import annotations

from shallownet.compare import validate_compare
from shallownet.config import load_config
from shallownet.eos import EosConfig
from shallownet.run_folder import check_output, provenance, start_run, write_json

SUMMARY = "edge of stability on a real net: sharpness vs 2/eta for several step sizes (configs/eos.yaml)"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg = load_config(EosConfig, config_path, overrides)
    validate_compare(cfg)
    check_output(cfg.output)
    from shallownet import interrupt
    from shallownet.cli import exit_status
    from shallownet.compare import compare, format_table, run_name
    from shallownet.eos import NEAR, eos_figure, gd_steps, hovering
    from shallownet.events import read_metrics
    from shallownet.plots import save_figure
    from shallownet.training import quiet_lightning

    quiet_lightning()
    interrupt.install()
    run_dir = start_run(cfg)
    result = compare(cfg, run_dir)
    for row in result["rows"]:
        if row["eta"] is not None:
            steps, sharpness = read_metrics(run_dir / run_name(row["eta"]))["curvature/sharpness"]
            row["hovering"] = hovering(gd_steps(steps, row["eta"], result["time_unit"]), sharpness, row["eta"])
    save_figure(eos_figure(run_dir, list(cfg.gd.lrs), result["time_unit"]), run_dir / "eos.png", dpi=120)
    status = "interrupted" if any(row["outcome"] == "interrupted" for row in result["rows"]) else "done"
    result.update(status=status, provenance=provenance(), figure="eos.png")
    write_json(run_dir / "summary.json", result)
    print(format_table(result))
    for row in result["rows"]:
        hover = row.get("hovering")
        if hover and hover["reached_at"] is not None:
            print(f"{row['run']}: S reached {NEAR:g} x 2/eta at step {hover['reached_at']}; since then eta*S/2 = "
                  f"{hover['median']:.3f} (median; range {hover['min']:.3f} - {hover['max']:.3f})")
        elif hover:
            print(f"{row['run']}: S stayed below 2/eta (at most {hover['max_before']:.3f} of it)")
    print(f"\nfigure: {run_dir / 'eos.png'}\nview it: tensorboard --logdir {run_dir}")
    return exit_status(status)
