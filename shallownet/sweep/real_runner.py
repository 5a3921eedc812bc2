"""`shallownet sweep model.kind=...`: every cell of step size x initial scale x seed of a real net trained by
full-batch GD at once on the vmapped engine (shallownet.sweep.vmap_engine); grid.npz, summary.json, the phase
map and its companions (PNG and TensorBoard) in a new run folder.

Runs are numbered row-major over (lr, scale, seed): flat index (i * n_scale + j) * n_seeds + k.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from shallownet import interrupt, registry
from shallownet.checks import ConfigError
from shallownet.losses import LOSSES
from shallownet.run_folder import provenance, start_run, write_json, writing
from shallownet.stop import INTERRUPTED, OUTCOMES, StopRule
from shallownet.sweep.grid import axis_values
from shallownet.sweep.real_grid import chunk_size, n_runs
from shallownet.sweep.regions import REGIONS, classify_regions, region_counts
from shallownet.sweep.vmap_engine import FLOAT_FIELDS, RealRuns, bytes_per_run, probe, refusal, simulate_real


class RealSweep:
    """The data, the loss, one model builder per cell and the grid's axes of a real-net sweep; built (and the
    model checked for vectorisation) before any run folder exists."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.kind = registry.model_kind(cfg.model.kind)
        self.device = torch.device(cfg.engine.device)
        data = registry.data_kind(cfg.data.kind).build(cfg, getattr(torch, cfg.train.dtype))
        self.data = data
        self.x, self.y = data.x.to(self.device), data.y.to(self.device)
        has_test = data.x_test is not None and len(data.x_test)
        self.x_test = data.x_test.to(self.device) if has_test else None
        self.y_test = data.y_test.to(self.device) if has_test else None
        self.loss_fn = LOSSES[cfg.loss or self.kind.loss]
        self.lr, self.scale = axis_values(cfg.grid.lr), axis_values(cfg.grid.scale)
        self.seeds = np.asarray(list(cfg.grid.seeds), dtype=np.int64)
        self.shape = (self.lr.size, self.scale.size, self.seeds.size)
        self.rule = StopRule(cfg.train.tol, cfg.train.divergence_norm, cfg.train.max_steps)
        first = self.build(int(self.seeds[0]), float(self.scale[0]))
        why = refusal(first) or probe(first, self.loss_fn, self.x, self.y)
        if why is not None:
            raise ConfigError(f"config key 'model.kind' {cfg.model.kind} cannot be trained on the vectorised sweep "
                              f"engine: {why}")
        self.units = _balance_units(first)
        self.chunk = chunk_size(cfg, bytes_per_run(first, len(self.x), 0 if self.x_test is None else len(self.x_test),
                                                   self.x))
        self._initial_balance: dict[tuple[int, float], np.ndarray] = {}

    def build(self, seed: int, scale: float) -> torch.nn.Module:
        """The model `shallownet train` builds with model.seed = seed and model.init_scale = scale."""
        cell = OmegaConf.merge(self.cfg, {"model": {"seed": seed, "init_scale": scale}})
        return self.kind.build(cell, self.data).to(self.device)

    def _build_recording(self, seed: int, scale: float) -> torch.nn.Module:
        model = self.build(seed, scale)
        if self.units is not None and (seed, scale) not in self._initial_balance:
            params = {k: p.detach()[None] for k, p in model.named_parameters()}
            self._initial_balance[(seed, scale)] = _mean_abs_balance(self.units, params)[0]
        return model

    def cells(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lr, scale, seed) of the runs with these flat indices."""
        i, rest = np.divmod(flat, self.scale.size * self.seeds.size)
        j, k = np.divmod(rest, self.seeds.size)
        return self.lr[i], self.scale[j], self.seeds[k]

    def simulate(self, flat: np.ndarray, keep_params: bool = False,
                 progress: Callable[[int], None] | None = None) -> tuple[RealRuns, np.ndarray]:
        """The runs with these flat indices (one chunk) and their balance ratios (final over initial mean_j |C_j|
        of the hidden units; NaN where the net is not positively homogeneous or the run diverged)."""
        lr, scale, seed = self.cells(flat)
        s = self.cfg.sharpness
        runs = simulate_real(self._build_recording, lr, scale, seed, self.loss_fn, self.x, self.y, self.rule,
                             x_test=self.x_test, y_test=self.y_test, sharpness_every=s.every_n_steps,
                             iterations=s.iterations, initial_iterations=s.initial_iterations,
                             chunk_size=max(flat.size, 1), keep_params=True, progress=progress)
        balance = np.full(flat.size, np.nan)
        if self.units is not None and flat.size:
            initial = np.array([self._initial_balance[(int(a), float(b))] for a, b in zip(seed, scale, strict=True)])
            with np.errstate(invalid="ignore", divide="ignore"):
                balance = _mean_abs_balance(self.units, runs.params) / initial
        if not keep_params:
            runs.params = None
        return runs, balance


def _balance_units(model: torch.nn.Module):
    """[(incoming layer name, [(outgoing layer name, is_linear, block)])] of the hidden units when the per-unit
    balance C_j = |w_j|^2 - |v_j|^2 is the gradient-flow invariant of the net (ReLU nets), else None."""
    try:
        from extensions.balance import applies, hidden_units
    except ImportError:  # the real nets' extensions are not installed
        return None
    try:
        holds, _ = applies(model)
        units = hidden_units(model)
    except ValueError:  # an architecture extensions.balance does not read
        return None
    if not holds or not units:
        return None
    return [(u.name, [(name, isinstance(layer, torch.nn.Linear), block) for name, layer, block in u.outgoing])
            for u in units]


def _mean_abs_balance(units, params: dict[str, torch.Tensor]) -> np.ndarray:
    """mean over every hidden unit of |C_j|, per run, from stacked parameters {name: [R, ...]}."""
    total, count = 0.0, 0
    for name, outgoing in units:
        weight = params[f"{name}.weight"]
        r, size = weight.shape[0], weight.shape[1]
        incoming = weight.reshape(r, size, -1).square().sum(-1)
        if f"{name}.bias" in params:
            incoming = incoming + params[f"{name}.bias"].square()
        out = 0.0
        for reader, is_linear, block in outgoing:
            per_input = params[f"{reader}.weight"].square().sum(1)  # [R, in] or [R, in, *kernel]
            out = out + per_input.reshape(r, size, block if is_linear else -1).sum(-1)
        total = total + (incoming - out).abs().sum(-1)
        count += size
    return (total / count).cpu().numpy()


RECORD_FIELDS = ("steps", *FLOAT_FIELDS, "balance_ratio")


def records(sweep: RealSweep, runs: RealRuns, balance: np.ndarray, done: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-run record as an [n_lr, n_scale, n_seeds] array, plus the axes; runs not in `done` (an
    interrupted sweep) are outcome `interrupted`, steps -1, NaN."""
    n = int(np.prod(sweep.shape))
    full = {name: np.full(n, np.nan) for name in (*FLOAT_FIELDS, "balance_ratio")}
    outcome = np.full(n, OUTCOMES.index(INTERRUPTED), dtype=np.int8)
    steps = np.full(n, -1, dtype=np.int64)
    outcome[done], steps[done] = runs.outcome, runs.steps
    for name in FLOAT_FIELDS:
        full[name][done] = getattr(runs, name)
    full["balance_ratio"][done] = balance
    eta = np.broadcast_to(sweep.lr[:, None, None], sweep.shape).reshape(-1)
    region = np.full(n, -1, dtype=np.int8)  # -1: not simulated
    region[done] = classify_regions(outcome[done], eta[done], full["final_sharpness"][done],
                                    full["max_loss_ratio"][done], margin=sweep.cfg.sharpness.margin)
    recs = {"eta": sweep.lr, "scale": sweep.scale, "seed": sweep.seeds, "outcome": outcome, "steps": steps, **full,
            "eta_lambda0": eta * full["initial_sharpness"], "region": region}
    return {k: (v.reshape(sweep.shape) if v.ndim == 1 and v.size == n and k not in ("eta", "scale", "seed") else v)
            for k, v in recs.items()}


def save_npz(path: Path, recs: dict[str, np.ndarray]) -> None:
    with writing(path) as partial, partial.open("wb") as file:
        np.savez_compressed(file, outcome_names=np.array(OUTCOMES), region_names=np.array(REGIONS), **recs)


def summarise(recs: dict[str, np.ndarray]) -> dict:
    """Counts and, per region, the medians of what the phase map asks: how much flatter (final sharpness
    over 2/eta and over lambda_0) and more balanced the runs end."""
    region, outcome = recs["region"], recs["outcome"]
    eta = recs["eta"][:, None, None]
    per_region = {}
    for code, name in enumerate(REGIONS):
        where = region == code
        if not where.any() or name == "diverged":
            continue
        with np.errstate(invalid="ignore"):
            flat = (recs["final_sharpness"] * eta / 2)[where]
            drop = (recs["final_sharpness"] / recs["initial_sharpness"])[where]
        per_region[name] = {"runs": int(where.sum()),
                            "eta_lambda0": _range(recs["eta_lambda0"][where]),
                            "final_sharpness_over_2_over_eta": _range(flat),
                            "final_over_initial_sharpness": _range(drop),
                            "max_loss_ratio": _range(recs["max_loss_ratio"][where]),
                            "balance_ratio": _range(recs["balance_ratio"][where]),
                            "test_accuracy": _range(recs["test_accuracy"][where])}
    return {"runs": int(outcome.size), "grid_shape": list(outcome.shape),
            "outcomes": {name: int((outcome == code).sum()) for code, name in enumerate(OUTCOMES)},
            "regions": region_counts(region), "config_steps": int(recs["steps"][recs["steps"] > 0].sum()),
            "per_region": per_region}


def _range(values: np.ndarray) -> dict | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def run_real_sweep(cfg: DictConfig) -> int:
    """The command after its config was checked: the sweep is built (the model probed) before the folder."""
    from shallownet.cli import exit_status

    started = time.perf_counter()
    sweep = RealSweep(cfg)
    interrupt.install()
    run_dir = start_run(cfg)
    total = n_runs(cfg)
    parts, balances, done = [], [], 0
    simulating = time.perf_counter()
    with tqdm(total=total, unit="run", desc="sweep", disable=not cfg.output.progress) as bar:
        while done < total and interrupt.requested() is None:
            flat = np.arange(done, min(done + sweep.chunk, total))
            runs, balance = sweep.simulate(flat, keep_params=cfg.output.save_params, progress=bar.update)
            parts.append(runs)
            balances.append(balance)
            done += flat.size
    seconds = time.perf_counter() - simulating
    runs = RealRuns.concatenate(parts) if parts else _empty_runs()
    recs = records(sweep, runs, np.concatenate(balances) if balances else np.empty(0), np.arange(done))
    save_npz(run_dir / "grid.npz", recs)
    status = "done" if done == total else INTERRUPTED
    figures = []
    if status == "done":
        if cfg.output.save_params:
            _save_params(run_dir / "params.npz", runs, sweep.shape)
        figures = write_figures(run_dir, cfg, recs)
    steps = int(recs["steps"][recs["steps"] > 0].sum())
    summary = {"status": status, "model": cfg.model.kind, "data": cfg.data.kind, **summarise(recs),
               "region_codes": dict(enumerate(REGIONS)), "outcome_codes": dict(enumerate(OUTCOMES)),
               "files": {"grid": "grid.npz", "figures": figures,
                         **({"params": "params.npz"} if cfg.output.save_params and status == "done" else {})},
               "timing": {"simulation_seconds": seconds, "chunk_size": sweep.chunk,
                          "run_steps_per_second": steps / seconds if seconds > 0 else None,
                          "total_seconds": time.perf_counter() - started},
               "provenance": provenance()}
    write_json(run_dir / "summary.json", summary)
    counts = ", ".join(f"{n} {name}" for name, n in summary["regions"].items() if n)
    print(f"sweep: {total} runs of {cfg.model.kind} ({counts}) in {seconds:.2f} s, {steps} run-steps "
          f"({summary['timing']['run_steps_per_second'] or 0:.3g}/s); outputs in {run_dir}")
    return exit_status(status)


def _empty_runs() -> RealRuns:
    empty = np.empty(0)
    return RealRuns(np.empty(0, dtype=np.int8), np.empty(0, dtype=np.int64), *([empty] * len(FLOAT_FIELDS)))


def _save_params(path: Path, runs: RealRuns, shape: tuple[int, int, int]) -> None:
    arrays = {name: p.cpu().numpy().reshape(*shape, *p.shape[1:]) for name, p in runs.params.items()}
    with writing(path) as partial, partial.open("wb") as file:
        np.savez_compressed(file, **arrays)


def write_figures(run_dir: Path, cfg: DictConfig, recs: dict[str, np.ndarray]) -> list[str]:
    from shallownet.plots import save_figure
    from shallownet.sweep.real_figures import real_figures

    writer = None
    if cfg.output.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir))
    title = f"GD on {cfg.model.kind} ({_describe_model(cfg)}) / {cfg.data.kind}"
    figures = real_figures(recs, title, cfg.train.max_steps, cfg.sharpness.margin)
    for name, fig in figures.items():
        save_figure(fig, run_dir / f"{name}.png", writer, f"sweep/{name}")
    if writer is not None:
        writer.close()
    return [f"{name}.png" for name in figures]


def _describe_model(cfg: DictConfig) -> str:
    own = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in ("kind", "seed", "init_scale")}
    return ", ".join(f"{k}={v}" for k, v in own.items() if v is not None)
