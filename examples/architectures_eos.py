"""The edge of stability on a ResNet and on a Transformer (docs/guide/architectures.md, Results): two
`shallownet eos` runs, read back, and the Hessian's spectral density at the start and at the edge.

    python examples/architectures_eos.py [--root runs] [--figures docs/figures] [--device cpu]
    python examples/architectures_eos.py --steps 20 --vectors 2 --lanczos 10     # a quick smoke run

1. `shallownet eos` on a tiny ResNet without BatchNorm (depth 1, width 8, 2 stages) on 300 digits, GD at
   eta = 0.05, 0.1, 0.2, 0.4, with the balance monitor (balance/applies_<layer>, mean_abs_ratio_<layer>,
   pred_error_<layer>) and the block sharpness monitor on;
2. `shallownet eos` on a 1-layer Transformer (d_model 16, 2 heads, parameters at 0.5 x PyTorch's init) on
   sorting (vocab 4, length 5, 200 training sequences), GD at eta = 0.2, 0.3, 0.45;
3. for one eta of each net (--edge), the spectral density by stochastic Lanczos quadrature
   (shallownet.curvature.density) at the initialisation and at the run's last state (its last.ckpt),
   next to the monitor's sharpness and 2/eta; and the HVP capability probe's verdict on each net.

Prints one line per process (where the sharpness first came within 5% of 2/eta, its median ratio after,
the largest ratio), the balance table and the spectra's extreme Ritz values; draws
<figures>/arch_eos_resnet_transformer.png, arch_spectrum.png and arch_balance_resnet.png.
--steps N runs every process for N steps instead of the study's (smoke tests).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

NETS = {  # name: (eos overrides, steps, the eta whose spectrum is drawn, what the figures call it)
    "resnet": ([
        "model.kind=resnet", "model.depth=1", "model.width=8", "model.stages=2", "data.n_train=300",
        "processes=[{method: gd, lr: 0.05}, {method: gd, lr: 0.1}, {method: gd, lr: 0.2}, {method: gd, lr: 0.4}]",
        # an odd cadence samples both phases of GD's period-2 oscillation at the edge
        "monitor.sharpness.every_n_steps=15", "monitor.balance.every_n_steps=5",
        "monitor.block_sharpness.every_n_steps=200", "monitor.block_sharpness.tol=1e-6",
    ], 600, 0.2, "ResNet, 2 stages x 1 block, width 8, no BatchNorm, 300 digits"),
    "transformer": ([
        "model.kind=transformer", "model.layers=1", "model.d_model=16", "model.heads=2", "model.mlp_width=32",
        "model.init_scale=0.5", "data.kind=sorting", "data.length=5", "data.n_train=200", "data.n_test=100",
        "processes=[{method: gd, lr: 0.2}, {method: gd, lr: 0.3}, {method: gd, lr: 0.45}]",
        "monitor.sharpness.every_n_steps=5", "monitor.block_sharpness.every_n_steps=100",
        "monitor.block_sharpness.tol=1e-6",
    ], 1500, 0.3, "Transformer, 1 layer, d_model 16, 2 heads, sorting (vocab 4, length 5), 200 sequences"),
}


def eos_run(name: str, overrides: list[str], steps: int, root: Path, device: str) -> Path:
    """One `shallownet eos` run (a new process, as a user runs it); returns its run folder."""
    command = [sys.executable, "-m", "shallownet", "eos", *overrides, f"train.max_steps={steps}",
               f"train.device={device}", f"output.root={root}", f"output.name=arch_{name}", "output.progress=false"]
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name}: shallownet eos failed:\n{done.stderr[-3000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("run folder: ")]
    return Path(line.removeprefix("run folder: ").split(" (")[0])


def metrics(sub_run: Path, steps_per_x: float) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (GD steps, values)} of a sub-run. Its metrics.csv's x column is the shared time axis
    t / train.time_unit; steps_per_x = time_unit / eta turns it into the process's own steps."""
    from shallownet.events import read_metrics

    return {tag: ([round(int(x) * steps_per_x) for x in xs], values.tolist())
            for tag, (xs, values) in read_metrics(sub_run).items()}


def report_eos(name: str, run_dir: Path) -> list[dict]:
    """One line per process from summary.json's rows and the sub-run's metrics; returns the rows with them."""
    from shallownet.compare import time_unit
    from shallownet.config import load_config
    from shallownet.eos import EosConfig

    unit = time_unit(load_config(EosConfig, run_dir / "config.yaml", []))
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    for row in rows:
        row["metrics"] = m = metrics(run_dir / row["run"], unit / row["eta"])
        ratio = m["curvature/sharpness_over_threshold"][1]
        hover = row["hovering"]
        where = ("never within 5% of 2/eta" if hover["reached_at"] is None else
                 f"within 5% of 2/eta from step {round(hover['reached_at'] / row['eta'])}, "
                 f"then median {hover['median']:.3f} (range {hover['min']:.3f} .. {hover['max']:.3f})")
        print(f"{name} {row['run']}: {row['outcome']} after {row['steps']} steps, 2/eta = {2 / row['eta']:.4g}, "
              f"S(0) = {m['curvature/sharpness'][1][0]:.4g}, max S/(2/eta) = {max(ratio):.4f}, {where}, "
              f"final loss {row['final_loss']:.4g}")
        blocks = {tag.removeprefix("curvature/block_sharpness_"): series for tag, series in m.items()
                  if tag.startswith("curvature/block_sharpness_")}
        if blocks:  # each block's lambda_max at the monitor's last step (interlacing: <= the sharpness there)
            at = max(next(iter(blocks.values()))[0])
            sharpness = dict(zip(*m["curvature/sharpness"], strict=True))
            told = ", ".join(f"{block} {values[-1]:.4g}" for block, (_, values) in blocks.items())
            print(f"{name} {row['run']} block sharpness at step {at}: {told} (S = {sharpness.get(at, math.nan):.4g})")
    return rows


def report_balance(rows: list[dict]) -> None:
    """Per process and hidden layer: balance/applies_<layer>, the final mean |C_j| over its initial value
    and, where the identity holds, the largest one-step prediction error."""
    for row in rows:
        m = row["metrics"]
        layers = [tag.removeprefix("balance/applies_") for tag in m if tag.startswith("balance/applies_")]
        for layer in layers:
            applies = m[f"balance/applies_{layer}"][1][-1]
            ratio = m[f"balance/mean_abs_ratio_{layer}"][1][-1]
            error = m.get(f"balance/pred_error_{layer}")
            told = f", max pred_error {max(error[1]):.1e}" if error else ""
            print(f"balance {row['run']} {layer}: applies {applies:g}, mean |C_j| ratio {ratio:.4f}{told}")


def spectra(run_dir: Path, label: str, vectors: int, lanczos: int):
    """(probe result, {GD step: DensityEstimate}) of one sub-run: its seeded initialisation (step 0) and its
    last.ckpt."""
    import torch

    from shallownet import training
    from shallownet.compare import process_label, run_config
    from shallownet.config import load_config
    from shallownet.curvature import HessianOperator, density
    from shallownet.curvature.probe import probe_hvp
    from shallownet.eos import EosConfig

    cfg = load_config(EosConfig, run_dir / "config.yaml", [])
    (entry,) = [e for e in cfg.processes if process_label(e) == label]
    module = training.build(run_config(cfg, entry)).module
    data = module.curvature_data()
    probe = probe_hvp(module.model, module.loss_fn, data)

    def spectrum():
        return density(HessianOperator(module.model, module.loss_fn, data, method=probe.method), vectors, lanczos)

    found = {0: spectrum()}
    checkpoint = torch.load(run_dir / label / training.CHECKPOINT, map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    found[checkpoint["global_step"]] = spectrum()
    return probe, found


def state_name(step: int) -> str:
    return "start" if step == 0 else f"step {step}"


def eos_figure(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(11, 6.5), sharex="col", layout="constrained")
    for column, (_, rows, title) in enumerate(results.values()):
        top, bottom = axes[0, column], axes[1, column]
        for row in rows:
            steps, sharpness = row["metrics"]["curvature/sharpness"]
            (line,) = top.plot(steps, sharpness, lw=1, label=f"eta = {row['eta']:g}")
            top.axhline(2 / row["eta"], color=line.get_color(), ls="--", lw=1)
            bottom.semilogy(*row["metrics"]["dynamics/loss"], color=line.get_color(), lw=1)
        highest = max(max(row["metrics"]["curvature/sharpness"][1]) for row in rows)
        top.set(title=textwrap.fill(title, 60), ylabel="sharpness S (dashed: 2/eta)",
                ylim=(0, 1.05 * max(highest, 2 / min(r["eta"] for r in rows))))
        top.title.set_fontsize(9)
        top.legend(fontsize=8, loc="upper right")
        bottom.set(xlabel="GD step", ylabel="training loss")
    fig.suptitle("Full-batch GD, MSE, float64: the sharpness against 2/eta", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spectrum_figure(found: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(1, len(found), figsize=(11, 4), layout="constrained")
    for ax, (title, eta, sharpness, estimates) in zip(axes, found.values(), strict=True):
        low, high = min(e.low for e in estimates.values()), max(e.high for e in estimates.values())
        sigma = 0.01 * (high - low)
        grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, 2000, dtype=torch.float64)
        for at, estimate in estimates.items():
            (line,) = ax.semilogy(grid, estimate.smoothed(sigma, grid)[1].clamp_min(1e-8),
                                  label=f"{state_name(at)}: S = {sharpness[at]:.3g}")
            ax.axvline(sharpness[at], color=line.get_color(), ls=":", lw=1)
        ax.axvline(2 / eta, color="k", ls="--", lw=1, label=f"2/eta = {2 / eta:.3g}")
        ax.set(title=textwrap.fill(title, 60), xlabel="Hessian eigenvalue", ylim=(1e-6, None))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density (SLQ, Gaussian-smoothed)")
    n_hvp = next(iter(next(iter(found.values()))[3].values())).n_hvp
    fig.suptitle(f"Hessian spectral density by stochastic Lanczos quadrature ({n_hvp} HVPs each) at the start and "
                 "at the last step (dotted: the monitor's sharpness S)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def balance_figure(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    layers = [t.removeprefix("balance/applies_") for t in rows[0]["metrics"] if t.startswith("balance/applies_")]
    held = [layer for layer in layers if rows[0]["metrics"][f"balance/applies_{layer}"][1][0] == 1]
    fig, axes = plt.subplots(1, len(held), figsize=(5 * len(held), 3.6), squeeze=False, layout="constrained")
    for ax, layer in zip(axes[0], held, strict=True):
        for row in rows:
            ax.plot(*row["metrics"][f"balance/mean_abs_ratio_{layer}"], lw=1, label=f"eta = {row['eta']:g}")
        ax.axhline(1, color="k", ls=":", lw=1)
        ax.set(title=f"units of {layer}", xlabel="GD step", ylabel="mean |C_j| / its initial value")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_back(name: str, run_dir: Path, edge: float, vectors: int, lanczos: int) -> tuple[list[dict], dict]:
    """Everything printed and drawn about one net's eos run folder: its rows (with their metrics) and, for the
    process at eta = edge, {state: the monitor's sharpness} and {state: DensityEstimate}."""
    rows = report_eos(name, run_dir)
    if name == "resnet":
        report_balance(rows)
    (row,) = [r for r in rows if math.isclose(r["eta"], edge)]
    probe, estimates = spectra(run_dir, row["run"], vectors, lanczos)
    print(f"{name} probe: {probe.message}")
    steps_logged, sharpness = row["metrics"]["curvature/sharpness"]
    measured = {}
    for at, estimate in estimates.items():
        # the last checkpoint need not fall on a monitor step: take the monitor's latest S at or before it
        logged = max(i for i, step in enumerate(steps_logged) if step <= at)
        measured[at] = sharpness[logged]
        print(f"{name} {row['run']} spectrum at {state_name(at)}: Ritz values in [{estimate.low:.4g}, "
              f"{estimate.high:.4g}], monitor's S at step {steps_logged[logged]} = {measured[at]:.6g}, "
              f"tr(H)/dim = {estimate.moment(1):.4g}, {estimate.n_hvp} HVPs")
    return rows, (measured, estimates)


def draw(results: dict, found: dict, figures: Path) -> None:
    figures.mkdir(parents=True, exist_ok=True)
    eos_figure(results, figures / "arch_eos_resnet_transformer.png")
    spectrum_figure(found, figures / "arch_spectrum.png")
    balance_figure(results["resnet"][1], f"{results['resnet'][2]}, full-batch GD: per-unit balance where "
                   "balance/applies_<layer> = 1", figures / "arch_balance_resnet.png")
    print(f"figures: {figures}/arch_eos_resnet_transformer.png, arch_spectrum.png, arch_balance_resnet.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs"), help="output.root of the eos runs")
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--device", default="cpu", help="train.device of the runs (the spectra run on CPU)")
    parser.add_argument("--steps", type=int, help="steps of every process (default: the study's)")
    parser.add_argument("--vectors", type=int, default=5, help="SLQ start vectors per spectrum")
    parser.add_argument("--lanczos", type=int, default=60, help="Lanczos steps per start vector")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")

    results, found = {}, {}
    for name, (overrides, steps, edge, title) in NETS.items():
        steps = args.steps or steps
        run_dir = eos_run(name, overrides, steps, args.root, args.device)
        rows, (measured, estimates) = read_back(name, run_dir, edge, args.vectors, args.lanczos)
        results[name] = run_dir, rows, f"{title}, {steps} steps"
        found[name] = f"{title.split(',')[0]}, eta = {edge:g}", edge, measured, estimates
    draw(results, found, args.figures)


if __name__ == "__main__":
    main()
