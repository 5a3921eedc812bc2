"""`shallownet train [CONFIG] [key=value ...]`: one GD run, logged to TensorBoard, with a summary."""

from __future__ import annotations

from shallownet.config import RunConfig, load_config, validate_run
from shallownet.run_folder import check_output_root, new_run_dir, provenance, write_config, write_json

SUMMARY = "one GD run of the shallow net, logged to TensorBoard (default configs/train.yaml)"
DEFAULT_CONFIG = "train.yaml"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg = load_config(RunConfig, config_path, overrides)
    validate_run(cfg)
    check_output_root(cfg.output.root)
    from shallownet.training import describe, fit  # heavy imports only once the input is known good

    run_dir = new_run_dir(cfg.output.root, cfg.output.name)
    write_config(run_dir, cfg)
    summary = fit(cfg, run_dir)
    summary["provenance"] = provenance()
    write_json(run_dir / "summary.json", summary)
    print(describe(summary, run_dir, cfg.output.root))
    return 0
