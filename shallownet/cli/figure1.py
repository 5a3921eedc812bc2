"""`shallownet figure1 [CONFIG] [key=value ...]`: the paper's Figure 1 (d = 1) as PNG and in TensorBoard."""

from __future__ import annotations

from shallownet.figure1 import Figure1Config, validate_figure1
from shallownet.run_folder import open_run, provenance, write_json

SUMMARY = "the paper's Figure 1: GD and GF paths in the (a, b) plane for d = 1 (default configs/figure1.yaml)"
DEFAULT_CONFIG = "figure1.yaml"


def run(config_path: str | None, overrides: list[str]) -> int:
    cfg, run_dir = open_run(Figure1Config, validate_figure1, config_path, overrides)
    from shallownet.figure1 import make_figure1

    result = make_figure1(cfg, run_dir)
    result["provenance"] = provenance()
    write_json(run_dir / "figure1.json", result)
    for path in result["paths"]:
        run = "GF" if path["eta"] is None else f"GD eta={path['eta']:g}"
        print(f"init {path['init']}: {run:12s} {path['outcome']:9s} in {path['steps']:4d} steps, "
              f"Q(T)/Q(0) = {path['imbalance_ratio']:.4g}, lam(T) = {path['norm']:.6g}")
    print(f"figure: {result['png']}\nview it: tensorboard --logdir {run_dir} (IMAGES tab)")
    return 0
