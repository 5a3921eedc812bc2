"""`shallownet compare [CONFIG] [key=value ...]`: several processes from one init, one run folder."""

from __future__ import annotations

from shallownet.compare import CompareConfig, validate_compare
from shallownet.config import load_config
from shallownet.run_folder import check_output, provenance, start_run, write_json

SUMMARY = "several processes (GD step sizes, momentum, Adam, gradient flow, ...) from one init, with theory's limits"


SCHEMA = CompareConfig


def configure(config_path: str | None, overrides: list[str]):
    """The validated config, and the existing run folder it continues (None: a new one)."""
    cfg = load_config(SCHEMA, config_path, overrides)
    validate_compare(cfg)
    check_output(cfg.output)
    return cfg, None


def run(config_path: str | None, overrides: list[str]) -> int:
    return execute(configure(config_path, overrides)[0])


def execute(cfg, report=None) -> int:
    """Run the comparison of a validated cfg in a new run folder and print its table; `report(cfg,
    run_dir, result)` adds to the result (and prints) before summary.json is written (shallownet eos)."""
    from shallownet import interrupt
    from shallownet.cli import exit_status
    from shallownet.compare import compare, format_table, run_config
    from shallownet.training import build, quiet_lightning

    quiet_lightning()
    # every sub-run's data, model, process and monitors, built (and refused) before the folder exists
    pieces = [build(run_config(cfg, entry)) for entry in cfg.processes]
    interrupt.install()
    run_dir = start_run(cfg)
    result = compare(cfg, run_dir, pieces)
    status = "interrupted" if any(row["outcome"] == "interrupted" for row in result["rows"]) else "done"
    result.update(status=status, provenance=provenance())
    print(format_table(result))
    from shallownet.compare_figure import save_compare_figure

    result["figures"] = [save_compare_figure(run_dir, result)]
    print(f"figure: {run_dir / 'compare.png'}")
    if report is not None:
        report(cfg, run_dir, result)
    write_json(run_dir / "summary.json", result)
    print(f"\nrun folder: {run_dir} (sub-runs {', '.join(row['run'] for row in result['rows'])})")
    print(f"view it: tensorboard --logdir {run_dir}")
    return exit_status(status)
