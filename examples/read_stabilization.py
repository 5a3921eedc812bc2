"""A `shallownet train` run with the stabilization monitor read back: the measured oscillation |x_t| against the
predicted amplitude delta_t = sqrt(2 alpha / beta) (Damian, Nichani & Lee, ICLR 2023), window by window.

    shallownet train model.kind=mlp model.widths=[32,32] model.activation=tanh data.n_train=1000 optim.lr=0.5 \
        train.max_steps=1000 train.tol=1e-300 monitor.stabilization.every_n_steps=1
    python examples/read_stabilization.py runs/train/version_<n> [WINDOW] [OUT.png]

Prints, for each window of WINDOW steps (default 50): lr S (mean), the RMS and max of x, the median delta, and
RMS(x) / delta (with alpha and beta held fixed, the paper's model makes the mean of x^2 over a cycle delta^2, so
1 is the prediction). Saves |x_t| and delta_t against the step, and lr S, as OUT.png (default: the run folder's
stabilization.png).
"""

import csv
import math
import statistics
import sys
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(run_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the stabilization/* tags (metrics.csv: each row holds the tags logged together)."""
    out: dict[str, dict[int, float]] = {}
    with (run_dir / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for tag, value in row.items():
                if tag.startswith("stabilization/") and value:
                    out.setdefault(tag.split("/")[1], {})[int(float(row["step"]))] = float(value)
    return out


def lr_of(run_dir: Path) -> float:
    return float(yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"])


def windows(data: dict[str, dict[int, float]], lr: float, width: int) -> list[dict]:
    rows, steps = [], sorted(data["x"])
    for start in range(0, steps[-1] + 1, width):
        inside = [s for s in steps if start <= s < start + width]
        deltas = [data["delta"][s] for s in inside if s in data.get("delta", {})]
        if not inside:
            continue
        xs = [data["x"][s] for s in inside]
        rms = math.sqrt(sum(x * x for x in xs) / len(xs))
        delta = statistics.median(deltas) if deltas else float("nan")
        rows.append({"steps": f"{start}-{start + width - 1}", "lr_s": lr * statistics.mean(data["sharpness"][s]
                                                                                            for s in inside),
                     "rms_x": rms, "max_x": max(abs(x) for x in xs), "delta": delta, "ratio": rms / delta})
    return rows


def main(run_dir: Path, width: int, out: Path) -> None:
    data, lr = series(run_dir), lr_of(run_dir)
    print(f"{'steps':>10s} {'lr*S':>7s} {'RMS x':>10s} {'max |x|':>10s} {'delta':>10s} {'RMS/delta':>9s}")
    for row in windows(data, lr, width):
        print(f"{row['steps']:>10s} {row['lr_s']:7.3f} {row['rms_x']:10.3e} {row['max_x']:10.3e} "
              f"{row['delta']:10.3e} {row['ratio']:9.3g}")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steps = sorted(data["x"])
    top.semilogy(steps, [abs(data["x"][s]) for s in steps], lw=0.6, label="|x_t| measured")
    delta = sorted(data.get("delta", {}).items())
    top.semilogy([s for s, _ in delta], [d for _, d in delta], lw=1.2, label="delta_t = sqrt(2 alpha / beta)")
    top.set_ylabel("along u")
    top.legend()
    bottom.plot(steps, [lr * data["sharpness"][s] for s in steps], lw=0.8, label="lr S(theta_t)")
    bottom.axhline(2.0, ls="--", color="k", lw=0.8, label="2")
    bottom.set_xlabel("GD step")
    bottom.legend()
    top.set_title(f"{run_dir}: self-stabilisation, lr = {lr}")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    main(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 50,
         Path(sys.argv[3]) if len(sys.argv) > 3 else folder / "stabilization.png")
