"""GD (one or several step sizes) versus gradient flow from the same initialisation, against theory.md.

Every run is an ordinary shallownet.training.fit run with its own TensorBoard sub-run in one folder
(gd_lr=0.3/, gf/, ...). All sub-runs share one x-axis: time in units of `time_unit` (t = eta * k for GD,
the flow time for GF), so their curves overlay in one chart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from omegaconf import DictConfig, OmegaConf

from shallownet import theory
from shallownet.config import (
    MonitorConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
    TrainerConfig,
    kind_section,
    require,
    validate_run,
)
from shallownet.stop import CONVERGED

# --- config ------------------------------------------------------------------------------------------


@dataclass
class GDStepSizes:
    lrs: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.4, 0.5])  # noqa: UP006


@dataclass
class FlowConfig:
    enabled: bool = True
    rtol: float = 1.0e-10
    atol: float = 1.0e-12
    max_time: float = 100.0


@dataclass
class CompareConfig:  # configs/compare.yaml shows these defaults
    model: Optional[dict] = kind_section("model", default="scalar_linear")  # noqa: UP045
    data: Optional[dict] = kind_section("data")  # noqa: UP045
    loss: Optional[str] = None  # noqa: UP045
    gd: GDStepSizes = field(default_factory=GDStepSizes)
    gf: FlowConfig = field(default_factory=FlowConfig)
    time_unit: Optional[float] = None  # noqa: UP045 (None: the smallest GD step size)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    output: OutputConfig = field(default_factory=lambda: OutputConfig(name="compare"))

    # lam(0) = 4.5 and Q(0) = 0.8 lam(0): imbalanced enough for GD's flattening to show
    kind_defaults = {"scalar_linear": {"model": {"init": {"scheme": "imbalanced", "scale": 1.5, "imbalance": 0.8}}}}


def run_config(cfg: DictConfig, lr: float | None) -> DictConfig:
    """The train config of one sub-run: GD with step size lr, or gradient flow (lr None)."""
    unit = time_unit(cfg)
    shared = {key: cfg[key] for key in ("model", "data", "loss", "train", "trainer", "monitor", "output")}
    optim = ({"method": "gd", "lr": lr} if lr is not None else
             {"method": "flow", "lr": unit, "rtol": cfg.gf.rtol, "atol": cfg.gf.atol})
    train = {"time_unit": unit, "max_time": None if lr is not None else cfg.gf.max_time}
    base = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(base, False)
    return OmegaConf.merge(base, shared, {"optim": optim, "train": train})


def time_unit(cfg: DictConfig) -> float:
    return cfg.time_unit or min(cfg.gd.lrs)


def validate_compare(cfg: DictConfig) -> None:
    lrs = list(cfg.gd.lrs)
    require(len(lrs) >= 1, "gd.lrs", "a non-empty list of GD step sizes > 0", lrs)
    for i, lr in enumerate(lrs):
        require(lr > 0, f"gd.lrs[{i}]", "> 0", lr)
    require(len({run_name(lr) for lr in lrs}) == len(lrs), "gd.lrs", "a list of distinct step sizes", lrs)
    for key in ("rtol", "atol", "max_time"):
        require(cfg.gf[key] > 0, f"gf.{key}", "> 0", cfg.gf[key])
    require(cfg.time_unit is None or cfg.time_unit > 0, "time_unit", "> 0 or null", cfg.time_unit)
    one_process = "1 or null: the sub-runs run one after another in one process (shallownet train runs on several)"
    require(cfg.trainer.devices in (None, 1), "trainer.devices", one_process, cfg.trainer.devices)
    require(cfg.trainer.num_nodes == 1, "trainer.num_nodes", one_process, cfg.trainer.num_nodes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    require(world == 1, "trainer.devices", one_process + "; this process was started as one of several", world)
    for lr in sub_runs(cfg):
        validate_run(run_config(cfg, lr))


def sub_runs(cfg: DictConfig) -> tuple:
    """The GD step sizes, then None for gradient flow if it is enabled."""
    return (*cfg.gd.lrs, *([None] if cfg.gf.enabled else []))


# --- running -----------------------------------------------------------------------------------------


def run_name(lr: float | None) -> str:
    return "gf" if lr is None else f"gd_lr={lr:g}"


def compare(cfg: DictConfig, run_dir: Path) -> dict:
    """Run GD for each step size and GF, each in run_dir/<run name>/; returns the comparison (compare.json).

    Shallow-net quantities (eps, lam, Qn) give theory's limits; other models get the measured table.
    """
    from shallownet.callbacks.theory import TheoryMonitor
    from shallownet.registry import monitor
    from shallownet.training import run

    summaries, factors = [], []
    shallow = cfg.model.kind == "scalar_linear"
    for lr in sub_runs(cfg):
        monitors = [TheoryMonitor()] if shallow and lr is not None else []
        balance = cfg.monitor.balance.every_n_steps
        if balance:  # kept here, so its last values reach the table
            monitors.append(monitor("balance")(every_n_steps=balance))
        sub = OmegaConf.merge(run_config(cfg, lr), {"monitor": {"balance": {"every_n_steps": 0}}})
        (run_dir / run_name(lr)).mkdir()
        summaries.append(run(sub, run_dir / run_name(lr), extra_callbacks=monitors))
        summaries[-1]["final"].update(monitors[-1].last if balance else {})
        factors.append(monitors[0].factor if shallow and lr is not None else (1.0 if shallow else None))
    init, phi = summaries[0]["init"], summaries[0]["phi"]
    result = {"model": cfg.model.kind, "phi": phi, "width": cfg.model.get("width"), "tol": cfg.train.tol,
              "time_unit": time_unit(cfg), "init": init, "theory": None}
    lam_gf = None
    if shallow:
        lam_gf = float(theory.gf_solution_sharpness(init["imbalance_norm"], phi))
        result["theory"] = {
            "norm_gf": lam_gf,
            "theorem1_max_lr": float(theory.theorem1_max_lr(init["residual"], init["norm"], phi)),
            "two_over_norm_gf": 2.0 / lam_gf,
            "one_over_phi": 1.0 / phi if phi else float("inf"),
        }
    result["rows"] = [table_row(s, p, lam_gf) for s, p in zip(summaries, factors, strict=True)]
    return result


def table_row(summary: dict, factor: float | None, lam_gf: float | None) -> dict:
    """One line of the table: what happened (from the run's own summary), and theory's limit next to it
    for a converged shallow net."""
    eta, final, phi = summary["eta"], summary["final"], summary["phi"]
    row = {
        "run": run_name(eta), "eta": eta, "outcome": summary["status"], "steps": summary["steps"],
        "time": summary["time"] if eta is None else eta * summary["steps"],
        "grad_evals": summary["grad_evals"] if eta is None else summary["steps"],
        "regime": "flow" if eta is None else theory.regime(eta, lam_gf, phi) if lam_gf else "-",
        "final_norm": final.get("norm"), "final_sharpness": final.get("sharpness"),
        "imbalance_ratio": final.get("imbalance_ratio"), "final_loss": final.get("loss"),
        "final_balance": _mean([v for k, v in final.items() if k.startswith("balance/mean_abs_") and "ratio" not in k]),
        "factor": factor, "theory_norm_gf": lam_gf,
        "theory_norm": None, "rel_error_norm": None, "rel_error_sharpness": None,
    }
    if lam_gf is not None and summary["status"] == CONVERGED:  # theory's limits are about converged runs
        qn0 = summary["init"]["imbalance_norm"]
        expected = lam_gf if eta is None else float(theory.gd_limit_norm(qn0, factor, phi))
        row.update(theory_norm=expected, rel_error_norm=abs(final["norm"] - expected) / expected)
        if final.get("sharpness") is not None:
            row["rel_error_sharpness"] = abs(final["sharpness"] - expected) / expected
    return row


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- the printed table -------------------------------------------------------------------------------

_COLUMNS = (  # (header, row key, format)
    ("run", "run", "{}"), ("outcome", "outcome", "{}"), ("regime", "regime", "{}"), ("steps", "steps", "{}"),
    ("time", "time", "{:.4g}"), ("grads", "grad_evals", "{}"), ("lam(T)", "final_norm", "{:.8g}"),
    ("S(T)", "final_sharpness", "{:.8g}"), ("loss(T)", "final_loss", "{:.3g}"),
    ("mean |C_j|", "final_balance", "{:.6g}"), ("Q(T)/Q(0)", "imbalance_ratio", "{:.6g}"), ("P", "factor", "{:.6g}"),
    ("lam theory", "theory_norm", "{:.8g}"), ("rel err lam", "rel_error_norm", "{:.1e}"),
    ("rel err S", "rel_error_sharpness", "{:.1e}"),
)


def format_table(result: dict) -> str:
    """The comparison as aligned text: a theory header, then one line per run."""
    th, init = result["theory"], result["init"]
    if th is None:
        header = [f"model {result['model']}, tol = {result['tol']:g}; initial loss {init.get('loss'):.6g}", ""]
    else:
        header = [
            f"phi = {result['phi']:g}, width = {result['width']}, tol = {result['tol']:g}; from eps0 = "
            f"{init['residual']:.6g}, lam0 = {init['norm']:.6g}, Qn0 = {init['imbalance_norm']:.6g}",
            f"theory: lam_GF = sqrt(4 phi^2 + Qn0^2) = {th['norm_gf']:.8g}; lam_GD = sqrt(4 phi^2 + P^2 Qn0^2); "
            f"Theorem-1 bound eta < {th['theorem1_max_lr']:.4g}, 2/lam_GF = {th['two_over_norm_gf']:.4g}, "
            f"1/phi = {th['one_over_phi']:.4g}",
            "",
        ]
    cells = [[h for h, _, _ in _COLUMNS]]
    for row in result["rows"]:
        cells.append(["-" if row[key] is None else fmt.format(row[key]) for _, key, fmt in _COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = []
    for line in cells:  # names left-aligned, numbers right-aligned
        pairs = enumerate(zip(line, widths, strict=True))
        padded = [cell.ljust(width) if i < 3 else cell.rjust(width) for i, (cell, width) in pairs]
        lines.append("  ".join(padded))
    return "\n".join(header + lines)
