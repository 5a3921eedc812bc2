"""A whole sweep: simulate the grid (in this process or split over torch.distributed ranks), then write
grid.npz, summary.json, the PNG figures and the same figures to TensorBoard into a new run folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from shallownet import interrupt
from shallownet.cli import exit_status
from shallownet.plots import save_figure
from shallownet.run_folder import provenance, start_run, write_json
from shallownet.stop import INTERRUPTED
from shallownet.stop import OUTCOMES as ALL_OUTCOMES
from shallownet.sweep import distributed
from shallownet.sweep.chain import ChainGrid, chain_records, chain_summary, save_chain_npz, simulate_chain
from shallownet.sweep.chain_figures import chain_figures
from shallownet.sweep.engine import OUTCOMES, Runs, simulate
from shallownet.sweep.figures import MAP_YLABEL, figure3, sharpness_panel
from shallownet.sweep.grid import Grid, build_grid, chunk_size
from shallownet.sweep.momentum import simulate_momentum
from shallownet.sweep.orbit_fields import orbit_summary, sweep_orbit_records
from shallownet.sweep.orbit_figure import orbit_map
from shallownet.sweep.results import records, save_npz, summarise, swept_process


def compute(cfg: DictConfig, grid: Grid, flat: np.ndarray | None = None, device: str | None = None,
            progress: bool = False, desc: str = "sweep") -> tuple[np.ndarray, Runs]:
    """Simulate the runs of `grid` with the given flat indices (default all) as cfg.engine says, one chunk
    after another; a stop request (SIGINT / SIGTERM) ends it after the chunk in progress. Returns the flat
    indices simulated (a prefix of flat) and their runs."""
    flat = np.arange(grid.size) if flat is None else np.asarray(flat)
    size, done, parts = chunk_size(cfg), 0, []
    with tqdm(total=flat.size, unit="run", desc=desc, disable=not progress, smoothing=0.1) as bar:
        while done < flat.size and interrupt.requested() is None:
            parts.append(_simulate(cfg, grid, flat[done:done + size], device, bar.update))
            done += parts[-1].steps.size
        if not parts:
            parts.append(_simulate(cfg, grid, flat[:0], device, bar.update))
    runs = type(parts[0])(**{name: np.concatenate([getattr(part, name) for part in parts]) for name in vars(parts[0])})
    return flat[:done], runs


def _simulate(cfg: DictConfig, grid: Grid, flat: np.ndarray, device: str | None, progress) -> Runs:
    eta, index = grid.runs(flat)
    options = {"backend": cfg.engine.backend, "device": device or cfg.engine.device, "chunk_size": chunk_size(cfg)}
    if isinstance(grid, ChainGrid):
        return simulate_chain(eta, grid.w0, grid.phi, grid.rule, index, progress=progress, **options)
    if cfg.optim.method != "gd":
        return simulate_momentum(eta, grid.beta, index, grid.a0, grid.b0, grid.phi, grid.rule,
                                 nesterov=grid.nesterov, progress=progress, **options)
    return simulate(eta, index, grid.a0, grid.b0, grid.phi, grid.rule, progress=progress, **options)


def run_sweep(cfg: DictConfig) -> int:
    """The `shallownet sweep` command after its config has been checked. Interrupted (SIGINT / SIGTERM), it
    keeps the chunks it finished: grid.npz holds every run, the unsimulated ones with outcome
    `interrupted` and steps -1; summary.json says `interrupted`; no figures (half a grid would mislead)."""
    started = time.perf_counter()
    grid = build_grid(cfg)
    interrupt.install()
    with distributed.session(cfg.engine.device) as (rank, world, device):
        run_dir = None
        if rank == 0:
            run_dir = start_run(cfg)
        flat = distributed.share(grid.size, rank, world)
        if cfg.engine.backend == "numba" and cfg.init.depth == 2:  # JIT compile or cache load (~0.3 s) outside
            if cfg.optim.method == "gd":                            # the timed simulation
                from shallownet.sweep.kernel import load_kernel

                load_kernel()
            else:
                from shallownet.sweep.momentum_kernel import load_kernel

                load_kernel(nesterov=cfg.optim.method == "nesterov")
        simulating = time.perf_counter()
        desc = "sweep" if world == 1 else f"sweep, rank 0's share of {grid.size} runs on {world} processes"
        done, runs = compute(cfg, grid, flat, device, progress=cfg.output.progress and rank == 0, desc=desc)
        runs = distributed.gather(runs, done, grid.size, rank, world)
        seconds = time.perf_counter() - simulating
    if rank != 0:
        return 0
    finished = runs.steps >= 0
    timing = {"processes": world, "simulation_seconds": seconds,
              "config_steps_per_second": float(runs.steps[finished].sum()) / seconds if seconds > 0 else None}
    if finished.all():
        summary = write_outputs(run_dir, cfg, grid, runs, timing)
    else:
        summary = write_interrupted(run_dir, grid, runs, finished, timing)
    summary["timing"]["total_seconds"] = time.perf_counter() - started
    write_json(run_dir / "summary.json", summary)
    counts = ", ".join(f"{n} {name}" for name, n in summary["outcomes"].items())
    print(f"sweep: {grid.size} runs ({counts}) in {seconds:.2f} s on {world} process(es), "
          f"{timing['config_steps_per_second']:.3g} config-steps/s; outputs in {run_dir}")
    return exit_status(summary["status"])


def write_interrupted(run_dir: Path, grid: Grid, runs: Runs, finished: np.ndarray, timing: dict) -> dict:
    """grid.npz of an interrupted sweep (the records of every run; where none was simulated outcome
    `interrupted`, steps -1 and NaN values), and its summary."""
    steps = runs.steps.copy()
    runs.steps[~finished] = 0  # the records' formulas need numbers; put back below
    recs = chain_records(grid, runs) if isinstance(grid, ChainGrid) else records(grid, runs)
    recs["outcome"] = np.where(finished.reshape(recs["outcome"].shape), recs["outcome"],
                               ALL_OUTCOMES.index(INTERRUPTED)).astype(recs["outcome"].dtype)
    recs["steps"] = steps.reshape(recs["steps"].shape)
    save_npz(run_dir / "grid.npz", recs, ALL_OUTCOMES)
    codes = recs["outcome"]
    return {"status": INTERRUPTED, "runs": int(codes.size), "finished_runs": int(finished.sum()),
            "outcomes": {name: int((codes == code).sum()) for code, name in enumerate(ALL_OUTCOMES)},
            "outcome_codes": dict(enumerate(ALL_OUTCOMES)), "files": {"grid": "grid.npz", "figures": []},
            "timing": timing, "provenance": provenance()}


def write_outputs(run_dir: Path, cfg: DictConfig, grid: Grid, runs: Runs, timing: dict) -> dict:
    """grid.npz and the figures (PNG and TensorBoard); returns the summary for summary.json."""
    chain = isinstance(grid, ChainGrid)
    recs = chain_records(grid, runs) if chain else records(grid, runs)
    # GD only: momentum's four-number map is not analysed
    orbits = cfg.orbit.steps > 0 and getattr(grid, "beta", 0.0) == 0
    if orbits:
        recs.update(sweep_orbit_records(grid, runs, recs["outcome"], cfg.orbit.steps, cfg.orbit.tol))
    if chain:
        save_chain_npz(run_dir / "grid.npz", recs)
        figures = chain_figures(recs, grid.rule.max_steps, grid.rule.tol)
        described = chain_summary(grid, recs)
        title = f"GD on the depth-{grid.depth} scalar chain, Φ = {grid.phi:g}: orbits after the budget"
    else:
        save_npz(run_dir / "grid.npz", recs)
        process = swept_process(grid)
        figures = {"figure3": figure3(recs, grid.phi, grid.rule.max_steps, grid.rule.tol, process),
                   "sharpness": sharpness_panel(recs, grid.phi, process)}
        described = summarise(grid, recs)
        title = f"GD on the shallow linear net (width {grid.a0.shape[1]}), Φ = {grid.phi:g}: orbits after the budget"
    if orbits:
        least = float(recs["least_sharpness"]) if chain else 2.0 * grid.phi
        figures["orbits"] = orbit_map(recs, least, grid.rule.max_steps, cfg.orbit.steps, title,
                                      "initial scale s" if chain else MAP_YLABEL)
        described["orbits"] = orbit_summary(recs, cfg.orbit.steps)
    writer = None
    if cfg.output.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir))
    for name, fig in figures.items():
        save_figure(fig, run_dir / f"{name}.png", writer, f"sweep/{name}")
    if writer is not None:
        writer.close()
    summary = {
        "status": "done",
        "process": {"method": cfg.optim.method, "momentum": getattr(grid, "beta", 0.0)},
        "outcome_codes": dict(enumerate(OUTCOMES)),
        **described,
        "files": {"grid": "grid.npz", "figures": [f"{name}.png" for name in figures]},
        "timing": timing,
        "provenance": provenance(),
    }
    return summary
