"""`shallownet train [CONFIG] [key=value ...]`: one GD run, logged to TensorBoard, with a summary."""

from __future__ import annotations

from shallownet.config import RunConfig, validate_run
from shallownet.run_folder import open_run, provenance, write_json

SUMMARY = "one GD run of the shallow net, logged to TensorBoard (default configs/train.yaml)"
DEFAULT_CONFIG = "train.yaml"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, run_dir = open_run(RunConfig, validate_run, config_path, overrides)
    from shallownet.training import describe, fit  # heavy imports only once the input is known good

    summary = fit(cfg, run_dir)
    summary["provenance"] = provenance()
    write_json(run_dir / "summary.json", summary)
    print(describe(summary, run_dir, cfg.output.root))
    return 0
