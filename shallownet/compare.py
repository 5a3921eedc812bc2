"""Several processes (GD at several step sizes, momentum, Adam, gradient flow, ...) from one initialisation,
against theory.md.

Every process is an ordinary shallownet.training.run with its own TensorBoard sub-run in one folder
(gd_lr=0.3/, momentum_lr=0.1_momentum=0.9/, flow/, ...). All sub-runs share one x-axis: process time in units of
train.time_unit (t = lr k for GD, lr k / (1 - beta) for momentum, the flow time for a flow), so their curves
overlay in one chart; each sub-run's own step count is the tag process/step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 (omegaconf reads typing.List / Optional only)

from omegaconf import DictConfig, OmegaConf

from shallownet import registry, theory
from shallownet.checks import require
from shallownet.config import (
    OutputConfig,
    RunConfig,
    TrainConfig,
    TrainerConfig,
    kind_list,
    kind_section,
    monitor_section,
    validate_process,
    validate_run,
)
from shallownet.processes.base import FLOW_IDENTITIES, GD_IDENTITIES
from shallownet.stop import CONVERGED

FLOWS_ONLY_TIME_UNIT = 0.01  # the x-axis unit when every process is a flow (none has a time per step)
PROCESSES_HINT = "processes, a list of sections like [{method: gd, lr: 0.1}, {method: momentum}, {method: flow}]"


# --- config ------------------------------------------------------------------------------------------

@dataclass
class CompareConfig:  # configs/compare.yaml shows these defaults
    model: Optional[dict] = kind_section("model", default="scalar_linear")  # noqa: UP045  the model: a registered model
    # kind; its keys follow
    data: Optional[dict] = kind_section("data")  # noqa: UP045  the data set: a registered data kind (null: the model
    # kind's default); its keys follow
    loss: Optional[str] = None  # noqa: UP045  a name in shallownet.losses.LOSSES; null: the model's own
    processes: List[Any] = kind_list("process", key="method", default=[  # noqa: UP006  the processes, each a section
    # with a `method` and its keys, all from one init
        {"method": "gd", "lr": 0.1}, {"method": "gd", "lr": 0.3}, {"method": "gd", "lr": 0.4},
        {"method": "gd", "lr": 0.5}, {"method": "flow"}])
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: Any = monitor_section()
    output: OutputConfig = field(default_factory=lambda: OutputConfig(name="compare"))

    # the shallow net: lam(0) = 4.5 and Q(0) = 0.8 lam(0), imbalanced enough for GD's flattening to show, and
    # theory's one-step predictions along the GD sub-runs
    kind_defaults = {"scalar_linear": {"model": {"init": {"scheme": "imbalanced", "scale": 1.5, "imbalance": 0.8}},
                                       "monitor": {"theory": {"every_n_steps": 1}}}}
    renamed = {"gd": PROCESSES_HINT, "gf": f"an entry {{method: flow, rtol: ..., atol: ...}} of {PROCESSES_HINT} "
               "(its time budget: train.max_time)", "time_unit": "train.time_unit"}


def process_label(entry: DictConfig) -> str:
    """The sub-run's name: the method, its lr and momentum, and every other key that differs from the method's
    default (gd_lr=0.3, momentum_lr=0.1_momentum=0.9, adam_lr=0.001, flow, flow_rtol=0.001)."""
    kind = registry.process_kind(entry.method)
    defaults = kind.schema()
    parts = [entry.method]
    for f in dataclasses.fields(kind.schema):
        value = entry[f.name]
        if f.name in ("lr", "momentum") or value != getattr(defaults, f.name):
            text = ",".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) \
                else f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{f.name}={text}")
    return "_".join(parts)


def time_unit(cfg: DictConfig) -> float:
    """train.time_unit, or the smallest time per step among the discrete processes."""
    if cfg.train.time_unit is not None:
        return cfg.train.time_unit
    per_step = [p.time_per_step() for p in processes(cfg)]
    per_step = [t for t in per_step if t is not None]
    return min(per_step) if per_step else FLOWS_ONLY_TIME_UNIT


def processes(cfg: DictConfig) -> list:
    return [registry.process_kind(entry.method).build(entry) for entry in cfg.processes]


def run_config(cfg: DictConfig, entry: DictConfig) -> DictConfig:
    """The train config of the sub-run of one process: its optim section, the shared x-axis unit, and the
    theory monitor only where the process takes GD steps (it predicts GD steps)."""
    shared = {key: cfg[key] for key in ("model", "data", "loss", "train", "trainer", "monitor", "output")}
    process = registry.process_kind(entry.method).build(entry)
    monitor = {} if process.identities == GD_IDENTITIES else {"theory": {"every_n_steps": 0}}
    base = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(base, False)
    return OmegaConf.merge(base, shared, {"optim": entry, "train": {"time_unit": time_unit(cfg)},
                                          "monitor": monitor})


FLOWS_SCORED = ("flow", "modified_flow", "central_flow")  # the flows whose distance to GD compare logs


def gd_partners(cfg: DictConfig) -> dict[int, int]:
    """{flow entry: GD entry} for compare/distance_to_gd: a flow that models GD at lr (modified_flow,
    central_flow) with the gd entry at that lr; gradient flow with the only gd entry, when there is one."""
    gd = [j for j, entry in enumerate(cfg.processes) if entry.method == "gd"]
    partners = {}
    for i, entry in enumerate(cfg.processes):
        if entry.method not in FLOWS_SCORED:
            continue
        if entry.method == "flow":
            match = gd if len(gd) == 1 else []
        else:
            match = [j for j in gd if cfg.processes[j].lr == entry.lr]
        if match:
            partners[i] = match[0]
    return partners


def validate_compare(cfg: DictConfig) -> None:
    for i, entry in enumerate(cfg.processes):
        validate_process(entry, f"processes[{i}]")
    labels = [process_label(entry) for entry in cfg.processes]
    require(len(set(labels)) == len(labels), "processes", "a list of distinct processes", labels)
    require(cfg.train.resume is None, "train.resume",
            "null: compare starts its sub-runs afresh (resume a sub-run with shallownet train train.resume=...)",
            cfg.train.resume)
    one_process = "1 or null: the sub-runs run one after another in one process (shallownet train runs on several)"
    require(cfg.trainer.devices in (None, 1), "trainer.devices", one_process, cfg.trainer.devices)
    require(cfg.trainer.num_nodes == 1, "trainer.num_nodes", one_process, cfg.trainer.num_nodes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    require(world == 1, "trainer.devices", one_process + "; this process was started as one of several", world)
    for entry in cfg.processes:
        validate_run(run_config(cfg, entry))


# --- running -----------------------------------------------------------------------------------------


def compare(cfg: DictConfig, run_dir: Path, built: list | None = None) -> dict:
    """Run every process, each in run_dir/<label>/; returns the comparison (summary.json). built: the
    sub-runs' shallownet.training.Pieces, one per process, if already built (else built here).

    Shallow-net quantities (eps, lam, Qn) give theory's limits; other models get the measured table."""
    from shallownet.callbacks.distance import DistanceToGD, GDTrajectory
    from shallownet.training import build, run

    partners = gd_partners(cfg)
    trajectories = {j: GDTrajectory() for j in set(partners.values())}
    summaries, columns, distances = [None] * len(cfg.processes), {}, {}
    for i in sorted(range(len(cfg.processes)), key=lambda i: i not in trajectories):  # GD partners first
        entry = cfg.processes[i]
        label = process_label(entry)
        sub = run_config(cfg, entry)
        pieces = built[i] if built is not None else build(sub)
        for monitor in pieces.monitors.values():
            columns.update({key: header for header, key in getattr(monitor, "columns", ())})
        extra = trajectories.get(i)
        if i in partners:
            extra = distances[i] = DistanceToGD(trajectories[partners[i]], cfg.processes[partners[i]].lr)
        if extra is not None:
            pieces.callbacks.insert(len(pieces.callbacks) - 1, extra)  # before the recorder
        (run_dir / label).mkdir()
        summary = run(sub, run_dir / label, pieces=pieces)
        summaries[i] = {**summary, "run": label}
        if i in distances:
            summaries[i].update(distance_to_gd_end=distances[i].last, distance_to_gd_max=distances[i].largest)
    init, phi = summaries[0]["init"], summaries[0]["phi"]
    result = {"model": cfg.model.kind, "phi": phi, "width": cfg.model.get("width"), "tol": cfg.train.tol,
              "time_unit": time_unit(cfg), "init": init, "theory": None,
              "columns": columns}
    lam_gf = None
    if cfg.model.kind == "scalar_linear":
        lam_gf = float(theory.gf_solution_sharpness(init["imbalance_norm"], phi))
        result["theory"] = {
            "norm_gf": lam_gf,
            "theorem1_max_lr": float(theory.theorem1_max_lr(init["residual"], init["norm"], phi)),
            "two_over_norm_gf": 2.0 / lam_gf,
            "one_over_phi": 1.0 / phi if phi else float("inf"),
        }
    result["rows"] = [table_row(s, lam_gf, columns) for s in summaries]
    return result


def table_row(summary: dict, lam_gf: float | None, columns: dict) -> dict:
    """One line of the table: what happened (from the run's own summary; `columns` adds the monitors' own
    {tag: header}, e.g. the balance monitor's mean |C_j|), and theory's limit next to it for a converged
    shallow net: lam_GF for gradient flow, sqrt(4 phi^2 + P^2 Qn0^2) for GD with P from the theory monitor."""
    final, phi, eta, method = summary["final"], summary["phi"], summary["eta"], summary["method"]
    flow, gd_steps = summary["identities"] == FLOW_IDENTITIES, summary["identities"] == GD_IDENTITIES
    factor = final.get("theory/imbalance_factor")
    row = {
        "run": summary["run"], "method": method, "eta": eta, "outcome": summary["status"], "steps": summary["steps"],
        "time": summary["time"], "grad_evals": summary["grad_evals"],
        "regime": "flow" if flow else theory.regime(eta, lam_gf, phi) if lam_gf and gd_steps else "-",
        "final_norm": final.get("norm"), "final_sharpness": final.get("sharpness"),
        "final_preconditioned_sharpness": final.get("curvature/preconditioned_sharpness"),
        "stability_threshold": summary["stability_threshold"],
        "imbalance_ratio": final.get("imbalance_ratio"), "final_loss": final.get("loss"),
        **{key: final.get(key) for key in columns},
        "factor": factor, "theory_norm_gf": lam_gf,
        "distance_to_gd_end": summary.get("distance_to_gd_end"),
        "distance_to_gd_max": summary.get("distance_to_gd_max"),
        "theory_norm": None, "rel_error_norm": None, "rel_error_sharpness": None,
    }
    if lam_gf is not None and summary["status"] == CONVERGED:  # theory's limits are about converged runs
        qn0 = summary["init"]["imbalance_norm"]
        expected = None
        if flow:
            expected = lam_gf
        elif factor is not None:
            expected = float(theory.gd_limit_norm(qn0, factor, phi))
        if expected is not None:
            row.update(theory_norm=expected, rel_error_norm=abs(final["norm"] - expected) / expected)
            if final.get("sharpness") is not None:
                row["rel_error_sharpness"] = abs(final["sharpness"] - expected) / expected
    return row


# --- the printed table -------------------------------------------------------------------------------

_COLUMNS = (  # (header, row key, format)
    ("run", "run", "{}"), ("outcome", "outcome", "{}"), ("regime", "regime", "{}"), ("steps", "steps", "{}"),
    ("time", "time", "{:.4g}"), ("grads", "grad_evals", "{}"), ("lam(T)", "final_norm", "{:.8g}"),
    ("S(T)", "final_sharpness", "{:.8g}"), ("S_P(T)", "final_preconditioned_sharpness", "{:.6g}"),
    ("threshold", "stability_threshold", "{:.6g}"), ("loss(T)", "final_loss", "{:.3g}"),
    ("Q(T)/Q(0)", "imbalance_ratio", "{:.6g}"), ("P", "factor", "{:.6g}"),
    ("|d GD|(T)", "distance_to_gd_end", "{:.3g}"), ("max |d GD|", "distance_to_gd_max", "{:.3g}"),
    ("lam theory", "theory_norm", "{:.8g}"), ("rel err lam", "rel_error_norm", "{:.1e}"),
    ("rel err S", "rel_error_sharpness", "{:.1e}"),
)


def format_table(result: dict) -> str:
    """The comparison as aligned text: a theory header, then one line per run (a column only where some run
    has a value in it)."""
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
    extra = tuple((header_, key, "{:.6g}") for key, header_ in result["columns"].items())
    columns = [c for c in _COLUMNS[:11] + extra + _COLUMNS[11:]
               if c[1] in ("run", "outcome", "regime") or any(row[c[1]] is not None for row in result["rows"])]
    cells = [[h for h, _, _ in columns]]
    for row in result["rows"]:
        cells.append(["-" if row[key] is None else fmt.format(row[key]) for _, key, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:  # names left-aligned, numbers right-aligned
        pairs = enumerate(zip(line, widths, strict=True))
        padded = [cell.ljust(width) if i < 3 else cell.rjust(width) for i, (cell, width) in pairs]
        lines.append("  ".join(padded))
    return "\n".join(header + lines)

