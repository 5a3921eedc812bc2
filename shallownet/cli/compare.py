"""`shallownet compare [CONFIG] [key=value ...]`: GD for each step size and gradient flow, one run folder."""

from __future__ import annotations

from shallownet.compare import CompareConfig, validate_compare
from shallownet.config import load_config
from shallownet.run_folder import check_output, provenance, start_run, write_json

SUMMARY = "GD (several step sizes) vs gradient flow from one init, with theory's limits (configs/compare.yaml)"


def run(config_path: str | None, overrides: list[str]) -> int:
    return execute(load_config(CompareConfig, config_path, overrides))


def execute(cfg, report=None) -> int:
    """Check cfg, run the comparison in a new run folder and print its table; `report(cfg, run_dir,
    result)` adds to the result (and prints) before summary.json is written (shallownet eos)."""
    validate_compare(cfg)
    check_output(cfg.output)
    from shallownet import interrupt
    from shallownet.cli import exit_status
    from shallownet.compare import compare, format_table, run_config, sub_runs
    from shallownet.training import build, quiet_lightning

    quiet_lightning()
    build(run_config(cfg, sub_runs(cfg)[0]))  # reads the data and builds the model: errors before the folder
    interrupt.install()
    run_dir = start_run(cfg)
    result = compare(cfg, run_dir)
    status = "interrupted" if any(row["outcome"] == "interrupted" for row in result["rows"]) else "done"
    result.update(status=status, provenance=provenance())
    print(format_table(result))
    if report is not None:
        report(cfg, run_dir, result)
    write_json(run_dir / "summary.json", result)
    print(f"\nrun folder: {run_dir} (sub-runs {', '.join(row['run'] for row in result['rows'])})")
    print(f"view it: tensorboard --logdir {run_dir}")
    return exit_status(status)
