"""Mini-batch SGD at the edge of stochastic stability (Andreyev & Beneventano, arXiv 2412.20553), and whether SGD
shrinks the layer imbalance more than GD at the same step size: real `shallownet train` runs, read back.

    python examples/sgd_study.py OUT [--steps 3000] [--every 200] [--n-batches 50] [--n-train 1000]
                                     [--figure docs/figures/sgd_batch_sharpness_digits.png]

Part 1 (the figure): a digits MLP 64-32-10 tanh, 1/2 sum-over-classes MSE, float64, one init, trained by SGD at
batch sizes 8, 32, 128 and by full-batch GD at eta = 0.5; SGD at batch 32 with eta = 0.3; and SGD at batch 32
with a small eta = 0.05 until the loss is <= 0.1. monitor.batch_sharpness and monitor.sharpness every --every
steps. The figure draws curvature/batch_sharpness (with +-2 standard errors) and the full-batch lambda_max
(curvature/sharpness) against 2/eta, one panel per run.
Part 2 (balance): SGD at several batch sizes against GD, same eta, init and number of steps, on a ReLU MLP
64-32-10 at eta = 0.3 and 0.5 (monitor.balance: mean |C_j| of the hidden layer over its initial value) and on
model.kind=diagonal_linear with data.kind=linear_regression at eta = 0.2 (each a_j^2 - b_j^2 over its initial
value, and imbalance_norm's); final lambda_max of each.

Writes OUT/study.json (every number the guide quotes, per run, with the run's arguments) and the figure; the
runs themselves go under OUT/runs. With the defaults it takes about 7 minutes on one core (measured 2026-12-04).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shallownet.cli import main as shallownet  # noqa: E402
from shallownet.config import RunConfig, load_config  # noqa: E402
from shallownet.training import build  # noqa: E402

QUIET = ["output.progress=false", "train.tol=1e-300", "monitor.sharpness.tol=1e-6"]
DIAGONAL = ["model.kind=diagonal_linear", "data.kind=linear_regression", "data.n=32", "data.d=8", "data.noise=0.3",
            "data.spectrum=[8,4,2,1,1,1,0.5,0.25]"]


def process(lr: float, batch_size: int | None) -> list[str]:
    """SGD at this batch size, or full-batch GD for None."""
    if batch_size is None:
        return ["optim.method=gd", f"optim.lr={lr}"]
    return ["optim.method=sgd", f"optim.lr={lr}", f"optim.batch_size={batch_size}"]


def train(root: Path, name: str, args: list[str]) -> Path:
    assert shallownet(["train", *QUIET, *args, f"output.root={root}", f"output.name={name}"]) in (0, 1), args
    return max((root / name).iterdir(), key=lambda p: int(p.name.split("_")[1]))


def series(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from metrics.csv (each row holds the tags logged together)."""
    out: dict[str, dict[int, float]] = {}
    with (folder / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for tag, value in row.items():
                if tag != "step" and value:
                    out.setdefault(tag, {})[int(float(row["step"]))] = float(value)
    return out


def last(values: dict[int, float]) -> float:
    return values[max(values)]


def status(folder: Path) -> str:
    return json.loads((folder / "summary.json").read_text())["status"]


def edge_runs(opts) -> list[dict]:
    """Part 1: label, eta, batch size (None: full batch) and extra arguments of each run."""
    return [{"label": f"SGD b = {b}", "lr": 0.5, "batch": b, "extra": []} for b in (8, 32, 128)] + [
        {"label": "GD (full batch)", "lr": 0.5, "batch": None, "extra": []},
        {"label": "SGD b = 32", "lr": 0.3, "batch": 32, "extra": []},
        {"label": "SGD b = 32, small eta, to loss 0.1", "lr": 0.05, "batch": 32,
         "extra": ["train.tol=0.1", f"train.max_steps={4 * opts.steps}"]}]


def edge(opts, root: Path) -> list[dict]:
    mlp = ["model.kind=mlp", "model.widths=[32]", "model.activation=tanh", "data.kind=digits",
           f"data.n_train={opts.n_train}", "loss=half_sum_mse", f"train.max_steps={opts.steps}",
           f"monitor.sharpness.every_n_steps={opts.every}", f"monitor.batch_sharpness.every_n_steps={opts.every}"]
    results = []
    for i, run in enumerate(edge_runs(opts)):
        # full batch: every "fresh batch" is all rows, so two give the value (and a standard error of 0)
        n_batches = 2 if run["batch"] is None else opts.n_batches
        args = [*mlp, *process(run["lr"], run["batch"]), f"monitor.batch_sharpness.n_batches={n_batches}",
                *run["extra"]]
        tags = series(train(root, f"edge_{i}", args))
        steps = sorted(tags["curvature/batch_sharpness"])
        late = [s for s in steps if s >= steps[-1] / 2]  # the second half of the run: where it hovers
        threshold = 2 / run["lr"]
        results.append({**run, "args": args, "threshold": threshold, "steps": steps[-1],
                        "final_loss": last(tags["dynamics/loss"]),
                        "batch_sharpness": [tags["curvature/batch_sharpness"][s] for s in steps],
                        "batch_sharpness_stderr": [tags["curvature/batch_sharpness_stderr"][s] for s in steps],
                        "step_sharpness": [tags["curvature/step_sharpness"][s] for s in steps],
                        "batch_lambda_max": [tags["curvature/batch_lambda_max"][s] for s in steps],
                        "gni": [tags["curvature/gni"][s] for s in steps],
                        "sharpness_steps": sorted(tags["curvature/sharpness"]),
                        "sharpness": [tags["curvature/sharpness"][s] for s in sorted(tags["curvature/sharpness"])],
                        "late_batch_sharpness_over_threshold":
                            statistics.median(tags["curvature/batch_sharpness"][s] for s in late) / threshold,
                        "late_lambda_max_over_threshold":
                            statistics.median(tags["curvature/sharpness"][s] for s in late
                                              if s in tags["curvature/sharpness"]) / threshold})
        results[-1]["measured_steps"] = steps
    return results


def balance(opts, root: Path) -> dict:
    """Part 2: SGD at several batch sizes against GD, same eta, init and number of steps."""
    relu = ["model.kind=mlp", "model.widths=[32]", "model.activation=relu", "data.kind=digits",
            f"data.n_train={opts.n_train}", "loss=half_sum_mse", f"train.max_steps={opts.steps}",
            f"monitor.sharpness.every_n_steps={opts.steps}", f"monitor.balance.every_n_steps={opts.every}"]
    out = {"relu_mlp": [], "diagonal_linear": []}
    for lr, b in itertools.product((0.3, 0.5), (8, 32, 128, None)):
        args = [*relu, *process(lr, b)]
        folder = train(root, "balance_relu", args)
        tags = series(folder)
        out["relu_mlp"].append({"lr": lr, "batch": b, "args": args, "status": status(folder),
                                "steps": max(tags["dynamics/loss"]), "final_loss": last(tags["dynamics/loss"]),
                                "final_sharpness": last(tags["curvature/sharpness"]),
                                "initial_sharpness": tags["curvature/sharpness"][0],
                                "ratio_fc1": last(tags["balance/mean_abs_ratio_fc1"]),  # the one hidden layer
                                "mean_abs": last(tags["balance/mean_abs"]),
                                "initial_mean_abs": tags["balance/mean_abs"][0]})
    diagonal = [*DIAGONAL, f"train.max_steps={opts.steps}", f"monitor.sharpness.every_n_steps={opts.steps}"]
    model = build(load_config(RunConfig, None, diagonal)).module.model
    initial = (model.a.square() - model.b.square()).detach()
    for b in (4, 8, 16, None):
        args = [*diagonal, *process(0.2, b)]
        folder = train(root, "balance_diagonal", args)
        tags = series(folder)
        state = torch.load(folder / "last.ckpt", weights_only=False)["state_dict"]
        final = state["model.a"].square() - state["model.b"].square()
        out["diagonal_linear"].append({"batch": b, "args": args, "status": status(folder),
                                       "final_loss": last(tags["dynamics/loss"]),
                                       "final_sharpness": last(tags["curvature/sharpness"]),
                                       "initial_sharpness": tags["curvature/sharpness"][0],
                                       "imbalance_norm_ratio": last(tags["dynamics/imbalance_norm"])
                                       / tags["dynamics/imbalance_norm"][0],
                                       "per_coordinate_ratio": (final / initial).tolist()})
    return out


def figure(results: list[dict], path: Path, n_train: int) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    top: dict[float, float] = {}  # one y-range per step size, so that the panels at one eta compare
    for run in results:
        top[run["lr"]] = max(top.get(run["lr"], 0), 1.25 * max(run["threshold"], *run["batch_sharpness"],
                                                                 *run["sharpness"]))
    for ax, run in zip(axes.flat, results, strict=True):
        steps, value = run["measured_steps"], run["batch_sharpness"]
        band = [2 * e for e in run["batch_sharpness_stderr"]]
        ax.fill_between(steps, [v - e for v, e in zip(value, band, strict=True)],
                        [v + e for v, e in zip(value, band, strict=True)], color="C0", alpha=0.25, lw=0)
        ax.plot(steps, value, "o-", color="C0", ms=3, label="batch sharpness (±2 s.e.)")
        ax.plot(run["sharpness_steps"], run["sharpness"], "-", color="C3", label="λ_max (full batch)")
        ax.axhline(run["threshold"], color="k", ls="--", lw=1, label="2/η")
        ax.set_title(f"{run['label'].split(',')[0]}, η = {run['lr']:g}" + (", to loss 0.1" if run["lr"] < 0.1
                                                                            else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(0, top[run["lr"]])
    axes.flat[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Digits MLP 64-32-10 tanh, {n_train} images, ½Σ MSE, float64, one init: SGD at batch 8 / 32 / 128 "
                 "and GD at η = 0.5, SGD b = 32 at η = 0.3 and 0.05", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--n-batches", type=int, default=50)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--figure", type=Path, default=None, help="default: OUT/sgd_batch_sharpness_digits.png")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    root = opts.out / "runs"
    results = edge(opts, root)
    figure(results, opts.figure or opts.out / "sgd_batch_sharpness_digits.png", opts.n_train)
    study = {"edge": results, "balance": balance(opts, root)}
    (opts.out / "study.json").write_text(json.dumps(study, indent=1))
    print(f"{'run':36s} {'eta':>5s} {'2/eta':>6s} {'steps':>6s} {'loss':>8s} {'BS/(2/eta), 2nd half':>21s} "
          f"{'lmax/(2/eta)':>13s}")
    for run in results:
        print(f"{run['label']:36s} {run['lr']:5.2f} {run['threshold']:6.2f} {run['steps']:6d} {run['final_loss']:8.4f} "
              f"{run['late_batch_sharpness_over_threshold']:21.3f} {run['late_lambda_max_over_threshold']:13.3f}")
    print(f"{'ReLU MLP':20s} {'loss':>8s} {'lmax 0 -> T':>16s} {'mean|C| T/0':>12s}")
    for row in study["balance"]["relu_mlp"]:
        name = f"eta {row['lr']} b = {row['batch'] or 'full'}"
        if row["status"] == "diverged":
            print(f"{name:20s} diverged at step {row['steps']}")
            continue
        print(f"{name:20s} {row['final_loss']:8.4f} "
              f"{row['initial_sharpness']:7.3f} -> {row['final_sharpness']:6.3f} {row['ratio_fc1']:12.4f}")
    print(f"{'diagonal, eta 0.2':20s} {'loss':>8s} {'lmax 0 -> T':>16s} {'|D| T/0':>9s}  per coordinate D_j(T)/D_j(0)")
    for row in study["balance"]["diagonal_linear"]:
        print(f"{'b = ' + str(row['batch'] or 'full'):20s} {row['final_loss']:8.4f} "
              f"{row['initial_sharpness']:7.3f} -> {row['final_sharpness']:6.3f} {row['imbalance_norm_ratio']:9.4f}  "
              + " ".join(f"{r:.3g}" for r in row["per_coordinate_ratio"]))


if __name__ == "__main__":
    main()
