"""`shallownet compare [CONFIG] [key=value ...]`: GD for each step size and gradient flow, one run folder."""

from __future__ import annotations

from shallownet.compare import CompareConfig, validate_compare
from shallownet.run_folder import open_run, provenance, write_json

SUMMARY = "GD (several step sizes) vs gradient flow from one init, with theory's limits (default configs/compare.yaml)"
DEFAULT_CONFIG = "compare.yaml"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, run_dir = open_run(CompareConfig, validate_compare, config_path, overrides)
    from shallownet.compare import compare, format_table

    result = compare(cfg, run_dir)
    result["provenance"] = provenance()
    write_json(run_dir / "compare.json", result)
    print(format_table(result))
    print(f"\nrun folder: {run_dir} (sub-runs {', '.join(row['run'] for row in result['rows'])})")
    print(f"view it: tensorboard --logdir {run_dir}")
    return 0
