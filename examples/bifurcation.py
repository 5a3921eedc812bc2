"""Bifurcation diagram of GD on the width-1 shallow net m = a b, loss 1/2 (a b - Phi)^2: for each step size
eta, the residual r = a b - Phi over the last K iterates (top) and the finite-time Lyapunov exponent (bottom),
from one or more starts (a0, b0), all runs vectorised (shallownet.orbits).

    python examples/bifurcation.py [--phi 1] [--eta 0.8 2.05 2501] [--init 1.5,0.2 --init 0.9,1.0]
                                   [--steps 20000] [--keep 256] [--out docs/figures/bifurcation_shallow_width1.png]

Prints, per start, the first eta of the grid with each period (1, 2, 4, 8, 16 found over the kept tail, to
relative tolerance 1e-7), the first eta where the orbit is chaotic (no period up to 64 and Lyapunov
exponent > 0.01) and the first eta where the run diverges.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shallownet.orbits import gd_orbit, lyapunov, orbit_periods  # noqa: E402

TOL = 1e-7
CHAOS = 0.01  # Lyapunov exponent above which a run with no period found counts as chaotic


def fail(message: str):
    print(f"bifurcation.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.error = fail  # one line, not argparse's usage block
    parser.add_argument("--phi", type=float, default=1.0)
    parser.add_argument("--eta", nargs=3, type=float, default=[0.8, 2.05, 2501], metavar=("MIN", "MAX", "NUM"))
    parser.add_argument("--init", action="append", metavar="A0,B0", help="start (repeatable)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--keep", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/bifurcation_shallow_width1.png"))
    args = parser.parse_args(argv)
    lo, hi, num = args.eta
    problems = []
    if not (0 < lo < hi and num >= 2 and num == int(num)):
        problems.append(f"--eta needs 0 < MIN < MAX and an integer NUM >= 2, got {args.eta}")
    if not 1 <= args.keep <= args.steps:
        problems.append(f"need 1 <= --keep <= --steps, got {args.keep}, {args.steps}")
    if not (np.isfinite(args.phi) and args.phi > 0):
        problems.append(f"--phi must be positive, got {args.phi}")
    try:
        args.init = [tuple(float(x) for x in s.split(",", 1)) for s in (args.init or ["1.5,0.2", "0.9,1.0"])]
        if any(len(z) != 2 for z in args.init):
            raise ValueError
    except ValueError:
        problems.append(f"--init takes A0,B0 (two numbers), got {args.init}")
    if problems:
        fail("; ".join(problems))
    return args


def first(eta, mask):
    return f"{eta[mask][0]:.4f}" if mask.any() else "none"


def main(argv=None) -> None:
    args = parse(argv)
    eta = np.linspace(args.eta[0], args.eta[1], int(args.eta[2]))
    inits = np.array(args.init)  # [n_init, 2]
    a0, b0 = inits[:, :1], inits[:, 1:]  # broadcast against eta: runs [n_init, n_eta]
    orbit = gd_orbit(a0, b0, args.phi, eta, args.steps, args.keep)
    period = orbit_periods(orbit.z, TOL)
    lam = lyapunov(a0, b0, args.phi, eta, args.keep * 16, burn=args.steps)
    r = orbit.z[..., 0] * orbit.z[..., 1] - args.phi  # [keep, n_init, n_eta]

    print(f"phi={args.phi:g} eta grid {eta[0]:g}..{eta[-1]:g} ({eta.size} values), steps={args.steps}, "
          f"keep={args.keep}; the paper's remark: eta = 1/phi = {1 / args.phi:.4f}")
    for i, (x, y) in enumerate(args.init):
        chaos = (period[i] == 0) & (lam[i] > CHAOS) & ~orbit.diverged[i]
        found = " ".join(f"period{p}={first(eta, period[i] == p)}" for p in (1, 2, 4, 8, 16))
        bounded = lam[i][np.isfinite(lam[i])]
        print(f"init=({x:g},{y:g}) {found} chaos={first(eta, chaos)} diverged={first(eta, orbit.diverged[i])} "
              f"max_lyapunov={f'{bounded.max():.4f}' if bounded.size else 'none'}")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (x, y) in reversed(list(enumerate(args.init))):  # the first start drawn last, on top
        label = f"start ({x:g}, {y:g})"
        top.plot(np.broadcast_to(eta, r[:, i].shape).ravel(), r[:, i].ravel(), ",", color=colours[i % 10],
                 alpha=0.6)
        top.plot([], [], ".", color=colours[i % 10], label=label)
        bottom.plot(eta, lam[i], color=colours[i % 10], lw=1, label=label)
    for ax in (top, bottom):
        ax.axvline(1 / args.phi, color="k", ls=":", lw=1, label=r"$\eta = 1/\Phi$")
    bottom.axhline(0, color="grey", lw=0.8)
    top.set(ylabel=f"residual $r = ab - \\Phi$ (last {args.keep} iterates)")
    bottom.set(xlabel=r"step size $\eta$", ylabel="finite-time Lyapunov exponent",
               ylim=(-1, max(0.1, np.nanmax(lam, initial=0) + 0.1)))
    top.legend(loc="upper left", markerscale=3)
    bottom.legend(loc="lower left")
    fig.suptitle(f"GD on m = ab, $\\Phi$ = {args.phi:g}: {eta.size} step sizes in [{eta[0]:g}, {eta[-1]:g}], "
                 f"{args.steps} steps, last {args.keep} kept (examples/bifurcation.py)", wrap=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
