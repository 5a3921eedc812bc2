"""The Hessian's spectral density at the start and at the end of a `shallownet train` run, as one figure.

    shallownet train model.kind=transformer optim.lr=0.03 train.max_steps=400 output.name=spectrum
    python benchmarks/spectrum.py runs/spectrum/version_0 [--vectors 5] [--steps 40]

The run folder's config.yaml rebuilds the net at its (seeded) initialisation; last.ckpt holds the end state.
Each density is stochastic Lanczos quadrature (shallownet.curvature.density, vectors x steps HVPs) on the
full training batch, smoothed with a Gaussian of 1% of the joint range. Writes <run>/spectrum.png and prints
the extreme Ritz values, the moments tr(H^k)/dim for k = 1, 2 and the cost.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from shallownet import training
from shallownet.config import RunConfig, load_config
from shallownet.curvature import HessianOperator, density


def estimate(module, vectors: int, steps: int):
    started = time.perf_counter()
    result = density(HessianOperator(module, module.loss_fn, module.curvature_data()), vectors, steps)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `shallownet train` run folder (config.yaml, last.ckpt)")
    parser.add_argument("--vectors", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cfg = load_config(RunConfig, args.run / "config.yaml", [])
    module = training.build(cfg).module
    states = {"initialisation": None, "end of the run": torch.load(args.run / training.CHECKPOINT,
                                                                  map_location="cpu", weights_only=False)}
    found = {}
    for label, checkpoint in states.items():
        if checkpoint is not None:
            module.load_state_dict(checkpoint["state_dict"])
            label = f"step {checkpoint['global_step']}"
        found[label], seconds = estimate(module, args.vectors, args.steps)
        e = found[label]
        print(f"{label}: Ritz values in [{e.low:.4g}, {e.high:.4g}], tr(H)/dim {e.moment(1):.4g}, "
              f"tr(H^2)/dim {e.moment(2):.4g}, {e.n_hvp} HVPs in {seconds:.0f} s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = min(e.low for e in found.values()), max(e.high for e in found.values())
    sigma = 0.01 * (high - low)
    grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, 2000, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, e in found.items():
        ax.semilogy(grid, e.smoothed(sigma, grid)[1].clamp_min(1e-8), label=f"{label} (top {e.high:.3g})")
    lr = cfg.optim.get("lr")
    if cfg.optim.method == "gd" and lr:
        ax.axvline(2 / lr, color="k", ls="--", lw=1, label=f"2/eta = {2 / lr:.3g}")
    ax.set(xlabel="Hessian eigenvalue", ylabel="density (Gaussian-smoothed SLQ)", ylim=(1e-7, None),
           title=f"{cfg.model.kind} on {cfg.data.kind or 'its default data'}: spectrum, {args.vectors} x "
                 f"{args.steps} Lanczos")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.run / "spectrum.png", dpi=120)
    print(f"figure: {args.run / 'spectrum.png'}")


if __name__ == "__main__":
    main()
