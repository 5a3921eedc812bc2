"""A sweep read back from its grid.npz and replotted: where GD converged, how much flatter its minimum is
than gradient flow's from the same start (lam_GD / lam_GF, the paper's Figure 3), against the Theorem-1
step-size bound.

    shallownet sweep grid.lr.num=40 grid.scale.num=30     # writes runs/figure3/version_<n>/grid.npz
    python examples/replot_sweep.py runs/figure3/version_<n> [OUT.png]

grid.npz holds one [n_lr, n_scale] array per record (outcome, steps, imbalance_ratio = Q(T)/Q(0),
final_norm, final_sharpness, norm_gd_over_gf, ...), the axes `eta` and `scale`, per-scale initial values
(norm0 = lam(0), norm_gf = lam_GF, theorem1_max_lr) and `outcome_names` for the integer outcome codes.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(run_dir: Path, out: Path) -> None:
    grid = np.load(run_dir / "grid.npz")
    names = list(grid["outcome_names"])
    outcome = np.asarray(names)[grid["outcome"]]  # [n_lr, n_scale] strings
    eta, lam0 = grid["eta"], grid["norm0"]
    ratio = np.where(outcome == "converged", grid["norm_gd_over_gf"], np.nan)
    for name in names:
        print(f"{name:10s} {np.count_nonzero(outcome == name):6d} of {outcome.size} runs")
    converged = ratio[np.isfinite(ratio)]
    print(f"lam_GD / lam_GF over the converged runs: min {converged.min():.4g}, max {converged.max():.4g} "
          f"(at most 1: GD's minimum is never sharper than GF's)")

    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    mesh = ax.pcolormesh(lam0, eta, ratio, shading="nearest", cmap="viridis", vmin=np.nanmin(ratio), vmax=1)
    fig.colorbar(mesh, ax=ax, label=r"$\lambda_{GD} / \lambda_{GF}$ (converged runs; white: not converged)")
    ax.plot(lam0, grid["theorem1_max_lr"], "w--", label="Theorem 1 bound on the step size")
    ax.set(xscale="log", yscale="log", xlabel=r"$\lambda(0) = |a|^2 + |b|^2$", ylabel=r"step size $\eta$",
           ylim=(eta.min(), eta.max()))
    ax.legend(loc="lower left")
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    main(folder, Path(sys.argv[2]) if len(sys.argv) > 2 else folder / "replot.png")
