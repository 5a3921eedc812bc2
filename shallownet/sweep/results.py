"""Per-run records of a sweep, derived from the raw runs with the theory formulas; npz and summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shallownet import theory
from shallownet.processes import descent
from shallownet.sweep.engine import CONVERGED, DIVERGED, OUTCOMES, Runs
from shallownet.sweep.grid import Grid
from shallownet.sweep.regions import REGIONS, classify_regions, region_counts


def initial_state(grid: Grid) -> dict[str, np.ndarray]:
    """Per scale: eps(0), lam(0), Qn(0), lam_GF and the Theorem-1 step-size bound."""
    u0 = ((grid.a0 + grid.b0) ** 2).sum(axis=1)
    v0 = ((grid.a0 - grid.b0) ** 2).sum(axis=1)
    eps0, lam0, qn0 = theory.state_from_uv(u0, v0, grid.phi)
    return {
        "residual0": eps0,
        "norm0": lam0,
        "imbalance0": (grid.a0**2 - grid.b0**2).sum(axis=1),
        "imbalance_norm0": qn0,
        "norm_gf": theory.gf_solution_sharpness(qn0, grid.phi),
        "theorem1_max_lr": theory.theorem1_max_lr(eps0, lam0, grid.phi),
    }


def records(grid: Grid, runs: Runs) -> dict[str, np.ndarray]:
    """Every per-run record as an [n_eta, n_scale] array, plus the per-axis arrays."""
    init = initial_state(grid)
    eta = grid.eta[:, None]
    outcome = runs.outcome(grid.rule).reshape(grid.shape)
    factor = runs.factor.reshape(grid.shape)
    residual, norm = runs.residual.reshape(grid.shape), runs.norm.reshape(grid.shape)
    converged = outcome == CONVERGED
    # lam_GD = sqrt(4 phi^2 + P^2 Qn0^2) is the minimum GD reached; defined only where it converged.
    with np.errstate(invalid="ignore", over="ignore"):  # diverged runs hold inf/nan and huge values
        norm_gd = np.where(converged, theory.gd_limit_norm(init["imbalance_norm0"], factor, grid.phi), np.nan)
        sharpness = theory.sharpness(residual, norm, grid.phi)
        # the largest loss over the initial one, from the largest eta |eps_t| of the steps taken (eps_0 among them)
        max_loss_ratio = np.where(runs.steps.reshape(grid.shape) > 0,
                                  (runs.max_step.reshape(grid.shape) / (eta * np.abs(init["residual0"]))) ** 2, 1.0)
    region = classify_regions(outcome, np.broadcast_to(eta, grid.shape), sharpness, max_loss_ratio,
                              constant=swept_process(grid).constant)
    return {
        "eta": grid.eta,
        "scale": grid.scale,
        **init,
        "outcome": outcome,
        "steps": runs.steps.reshape(grid.shape),
        "imbalance_ratio": factor,
        "final_residual": residual,
        "final_norm": norm,
        "final_sharpness": sharpness,
        "norm_gd_over_gf": norm_gd / init["norm_gf"],
        "max_step_residual": runs.max_step.reshape(grid.shape),
        "initial_sharpness": theory.sharpness(init["residual0"], init["norm0"], grid.phi),
        "max_loss_ratio": max_loss_ratio,
        "region": region,
        "theorem1_holds": (eta > 0) & (eta < init["theorem1_max_lr"]),
    }


def save_npz(path: Path, recs: dict[str, np.ndarray], names=OUTCOMES) -> None:
    """grid.npz (written aside, then renamed), with the outcome codes' names."""
    from shallownet.run_folder import writing

    with writing(path) as partial, partial.open("wb") as file:
        extra = {"region_names": np.array(REGIONS)} if "region" in recs else {}
        np.savez_compressed(file, outcome_names=np.array(names), **extra, **recs)


@dataclass(frozen=True)
class SweptProcess:
    """What the figures and the summary say of the grid's process."""

    name: str  # for titles: "GD", "heavy-ball momentum, β = 0.9", ...
    constant: float  # its stability threshold is constant / eta (docs/theory.md section 9)
    is_gd: bool  # Theorem 1 and the product P of one-step factors are GD's


def swept_process(grid: Grid) -> SweptProcess:
    if grid.beta == 0:
        return SweptProcess("GD", descent.GradientDescentProcess(lr=1.0).threshold(), True)
    kind = descent.Nesterov if grid.nesterov else descent.Momentum
    name = f"{'Nesterov' if grid.nesterov else 'heavy-ball'} momentum, β = {grid.beta:g}"
    return SweptProcess(name, kind(lr=1.0, momentum=grid.beta).threshold(), False)


def stability_threshold(grid: Grid, eta: np.ndarray) -> np.ndarray:
    """The threshold of the grid's process at step sizes eta."""
    return swept_process(grid).constant / eta


def summarise(grid: Grid, recs: dict[str, np.ndarray]) -> dict:
    """Counts, ranges and consistency checks of a sweep, for summary.json (Theorem 1 is GD's: only there)."""
    outcome, steps, ratio = recs["outcome"], recs["steps"], recs["imbalance_ratio"]
    converged = outcome == CONVERGED
    eta = recs["eta"][:, None]
    theorem1 = recs["theorem1_holds"]
    finite = outcome != DIVERGED
    # At |eps| <= tol the final norm is within O(tol) of lam_GD: a check of the recorded P.
    norm_gd = recs["norm_gd_over_gf"] * recs["norm_gf"][None, :]
    gd_mismatch = np.abs(recs["final_norm"] - norm_gd)[converged]
    summary = {
        "runs": int(outcome.size),
        "grid_shape": list(outcome.shape),
        "outcomes": {name: int((outcome == code).sum()) for code, name in enumerate(OUTCOMES)},
        "config_steps": int(steps.sum()),
        "regions": region_counts(recs["region"]),
        "steps_converged": _range(steps[converged]),
        "imbalance_ratio": _range(ratio[finite]),
        "imbalance_ratio_converged": _range(ratio[converged]),
        "norm_gd_over_gf_converged": _range(recs["norm_gd_over_gf"][converged]),
        "max_abs_final_norm_minus_norm_gd": float(gd_mismatch.max()) if gd_mismatch.size else None,
        "gd_flatter_than_gf_where_converged": int((recs["norm_gd_over_gf"][converged] <= 1.0).sum()),
        # |eps| <= tol reached at a minimum sharper than the threshold (2/eta for GD): an orbit that passed near
        # a minimum the process cannot stay at (for GD beyond eta = 1/phi every minimum is like that), counted
        # as converged all the same.
        "converged_at_unstable_minimum": int((converged & (recs["final_sharpness"]
                                                           > stability_threshold(grid, eta))).sum()),
    }
    if grid.beta == 0:
        summary["theorem1"] = {"runs_where_condition_holds": int(theorem1.sum()),
                               "of_which_converged": int((theorem1 & converged).sum())}
    return summary


def _range(values: np.ndarray) -> dict | None:
    if values.size == 0:
        return None
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}
