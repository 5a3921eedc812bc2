"""Final sharpness of GD, the central flow, the modified-equation flow and gradient flow over a range of step
sizes, on the paper's width-1 net from (a, b) = (2, 0), Phi = 1 (docs/guide/flows.md).

    python examples/flows_over_eta.py OUT [--etas 0.1 0.2 ...]

One `shallownet compare` (real Lightning runs, in OUT/runs) holds a GD, a central-flow and a modified-flow
sub-run at every eta, and one gradient-flow run. Next to them, the exact GD limit over a fine eta grid from
the sweep engine's exact recursion (the paper's lam_GD = sqrt(4 Phi^2 + P^2 Q0^2) at every step size), and the
central flow's limit of docs/theory.md section 11: lam_GF while eta lam_GF < 2, else 2/eta. Writes
OUT/flows_over_eta.png and OUT/flows_over_eta.json (the measured rows and the exact curves) and prints a table.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

A0, B0, PHI = 2.0, 0.0, 1.0
FLOWS = ("central_flow", "modified_flow")
LABELS = {"gd": "GD (Lightning run)", "central_flow": "central flow", "modified_flow": "modified-equation flow"}


def compare(out: Path, etas: list[float]) -> dict:
    """Run the compare and return its summary.json."""
    processes = [f"{{method: {method}, lr: {eta:g}}}" for method in ("gd", *FLOWS) for eta in etas]
    command = [sys.executable, "-m", "shallownet", "compare", "model.width=1", "model.init.scheme=explicit",
               f"model.init.a0=[{A0}]", f"model.init.b0=[{B0}]", f"model.phi={PHI}",
               f"processes=[{', '.join(processes)}, {{method: flow}}]", f"output.root={out / 'runs'}",
               "output.progress=false"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"shallownet compare failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1]}")
    (summary,) = (out / "runs").glob("compare/version_*/summary.json")
    return json.loads(summary.read_text())


def exact_gd_sharpness(etas: np.ndarray, tol: float) -> np.ndarray:
    """GD's final sharpness at each eta by the sweep engine's exact (U, V) recursion; NaN where it does not
    converge in 10^6 steps."""
    from shallownet import theory
    from shallownet.stop import StopRule
    from shallownet.sweep.engine import CONVERGED, simulate

    rule = StopRule(tol, 1e12, 1_000_000)
    runs = simulate(etas, np.zeros(etas.size, dtype=int), np.array([[A0]]), np.array([[B0]]), PHI, rule)
    sharpness = theory.sharpness(runs.residual, runs.norm, PHI)
    return np.where(runs.outcome(rule) == CONVERGED, sharpness, np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--etas", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4,
                                                                  0.45, 0.5, 0.55])
    args = parser.parse_args()
    if any(not 0 < eta < 1 / PHI for eta in args.etas):
        parser.error(f"--etas must lie in (0, {1 / PHI:g}): beyond 1/Phi GD has no stable minimum")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = compare(args.out, sorted(args.etas))
    rows = {(row["method"], row["eta"]): row for row in summary["rows"]}
    lam_gf = summary["theory"]["norm_gf"]
    fine = np.linspace(0.01, max(args.etas) * 1.05, 400)
    gd_curve = exact_gd_sharpness(fine, summary["tol"])
    central_limit = np.where(fine * lam_gf < 2, lam_gf, 2 / fine)

    print(f"from (a, b) = ({A0:g}, {B0:g}), Phi = {PHI:g}: lam_GF = {lam_gf:.6g}")
    print("eta     2/eta   GD      exact GD  central  its limit  modified  |central-GD|(T)  |modified-GD|(T)")
    table = []
    for eta in sorted(args.etas):
        gd, central, modified = (rows[(m, eta)] for m in ("gd", *FLOWS))
        entry = {"eta": eta, "gd": gd["final_sharpness"], "exact_gd": float(exact_gd_sharpness(np.array([eta]),
                                                                                               summary["tol"])[0]),
                 "central_flow": central["final_sharpness"], "central_limit": lam_gf if eta * lam_gf < 2 else 2 / eta,
                 "modified_flow": modified["final_sharpness"], "central_distance": central["distance_to_gd_end"],
                 "modified_distance": modified["distance_to_gd_end"]}
        table.append(entry)
        print(f"{eta:<7.3g} {2 / eta:<7.4g} {entry['gd']:<7.4f} {entry['exact_gd']:<9.4f} "
              f"{entry['central_flow']:<8.4f} {entry['central_limit']:<10.4f} {entry['modified_flow']:<9.4f} "
              f"{entry['central_distance']:<16.3f} {entry['modified_distance']:.3f}")
    flow = rows[("flow", None)]
    print(f"gradient flow: final sharpness {flow['final_sharpness']:.6f}")
    (args.out / "flows_over_eta.json").write_text(json.dumps(
        {"lam_gf": lam_gf, "gradient_flow": flow["final_sharpness"], "rows": table,
         "exact": {"eta": fine.tolist(), "gd": np.where(np.isnan(gd_curve), None, gd_curve).tolist(),
                   "central_limit": central_limit.tolist()}}, indent=1))
    draw(args.out / "flows_over_eta.png", table, fine, gd_curve, central_limit, lam_gf, flow["final_sharpness"])


def draw(path: Path, table: list[dict], fine, gd_curve, central_limit, lam_gf: float, flow_sharpness: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    etas = [row["eta"] for row in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    left.plot(fine, gd_curve, "k-", lw=1.2, label="GD, exact limit (the paper's λ_GD)")
    left.plot(fine, central_limit, color="tab:orange", ls="--", lw=1.2, label="central flow's limit min(λ_GF, 2/η)")
    left.plot(fine, 2 / fine, color="grey", ls=":", lw=1, label="2/η")
    left.axhline(lam_gf, color="tab:green", ls="-.", lw=1, label=f"λ_GF = {lam_gf:.4g}")
    left.plot(etas, [row["gd"] for row in table], "ko", ms=5, mfc="none", label=LABELS["gd"])
    for method, marker, colour in (("central_flow", "s", "tab:orange"), ("modified_flow", "^", "tab:blue")):
        left.plot(etas, [row[method] for row in table], marker, color=colour, ms=5, label=LABELS[method])
    left.plot([], [], "*", color="tab:green", label=f"gradient flow: {flow_sharpness:.4f}")
    left.set(xlabel="step size η", ylabel="final sharpness", ylim=(0.9 * min(row["gd"] for row in table),
                                                                    1.15 * lam_gf))
    left.set_title("where each run ends")
    left.legend(fontsize=8, loc="lower left")
    for key, marker, colour, label in (("central_distance", "s", "tab:orange", "central flow"),
                                       ("modified_distance", "^", "tab:blue", "modified-equation flow")):
        right.plot(etas, [row[key] for row in table], marker + "-", color=colour, label=label)
    right.set(xlabel="step size η", ylabel="|θ_flow(T) − θ_GD(T)|")
    right.set_title("distance to GD at the end")
    right.legend(fontsize=8)
    fig.suptitle(f"GD and its flows on m = ab from (a, b) = ({A0:g}, {B0:g}), Φ = {PHI:g}: one shallownet compare "
                 f"at η = {', '.join(f'{e:g}' for e in etas)}")
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
