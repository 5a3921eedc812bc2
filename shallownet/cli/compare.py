"""`shallownet compare [CONFIG] [key=value ...]`: GD for each step size and gradient flow, one run folder."""

from __future__ import annotations

from shallownet.compare import CompareConfig, validate_compare
from shallownet.config import load_config
from shallownet.run_folder import check_output_root, new_run_dir, provenance, write_config, write_json

SUMMARY = "GD (several step sizes) vs gradient flow from one init, with theory's limits (default configs/compare.yaml)"
DEFAULT_CONFIG = "compare.yaml"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg = load_config(CompareConfig, config_path, overrides)
    validate_compare(cfg)
    check_output_root(cfg.output.root)
    from shallownet.compare import compare, format_table  # heavy imports only once the input is known good

    run_dir = new_run_dir(cfg.output.root, cfg.output.name)
    write_config(run_dir, cfg)
    result = compare(cfg, run_dir)
    result["provenance"] = provenance()
    write_json(run_dir / "compare.json", result)
    print(format_table(result))
    print(f"\nrun folder: {run_dir} (sub-runs {', '.join(row['run'] for row in result['rows'])})")
    print(f"view it: tensorboard --logdir {run_dir}")
    return 0
