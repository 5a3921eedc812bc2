"""A compare run read back: its summary.json (one row per process: outcome, final norm and sharpness,
theory's prediction and the relative error) and each sub-run's metrics.csv (every logged value on the
shared time axis), replotted as the sharpness of every process against its stability threshold.

    shallownet compare train.max_steps=200              # writes runs/compare/version_<n>/
    python examples/read_compare.py runs/compare/version_<n> [OUT.png]

summary.json: `rows` (one per process, named by its sub-run folder), `init` (the values at the start),
`theory` (norm_gf = lam_GF, theorem1_max_lr, ...) and `time_unit` (metrics.csv's step column is process
time / time_unit, the same for every sub-run).
"""

import csv
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def column(path: Path, tag: str) -> tuple[list[float], list[float]]:
    """(x, value) of one tag from a sub-run's metrics.csv (each row holds the tags logged together)."""
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get(tag)]
    return [float(row["step"]) for row in rows], [float(row[tag]) for row in rows]


def main(run_dir: Path, out: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    unit = summary["time_unit"]
    print(f"from lam(0) = {summary['init']['norm']:.6g}; gradient flow's limit lam_GF = "
          f"{summary['theory']['norm_gf']:.8g}")
    for row in summary["rows"]:
        theory = row["theory_norm"]
        versus = f"theory {theory:.8g} (rel err {row['rel_error_norm']:.1e})" if theory is not None else "no theory"
        print(f"{row['run']:12s} {row['outcome']:10s} lam(T) = {row['final_norm']:.8g}, {versus}")

    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for row in summary["rows"]:
        x, sharpness = column(run_dir / row["run"] / "metrics.csv", "curvature/sharpness")
        (line,) = ax.plot([unit * t for t in x], sharpness, label=row["run"])
        if row["stability_threshold"] is not None and math.isfinite(row["stability_threshold"]):
            ax.axhline(row["stability_threshold"], color=line.get_color(), ls=":", lw=1)
    ax.axhline(summary["theory"]["norm_gf"], color="k", ls="--", lw=1, label=r"$\lambda_{GF}$")
    ax.set(xlabel="process time", ylabel="sharpness S (dotted: each process's 2/eta)",
           ylim=(0, 1.3 * summary["theory"]["norm_gf"]))
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    main(folder, Path(sys.argv[2]) if len(sys.argv) > 2 else folder / "sharpness_vs_time.png")
