"""What a central-flow run costs against GD over the same process time, in HVP-equivalents, side by side.

For each case, one `shallownet train` run of GD and one of `optim.method=central_flow` at the same eta,
from the same init, each to the same process time T (train.max_time, in GD steps), the sharpness monitor off. Printed:
wall time of each, their ratio; the central flow's counts from summary.json (velocity evaluations, HVPs,
third-order pairs, rejected steps); and the central flow's wall time in units of one Hessian-vector product
and of one gradient of the same model at its initial point (timed here, median of repeats), per unit of GD
time. A GD step is one gradient.

    python benchmarks/bench_central_flow.py            # about a minute on the 2-core machine
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shallownet.cli import main

OFF = ["monitor.sharpness.every_n_steps=0", "output.progress=false", "train.tol=1e-300"]
CASES = {  # name: (the model and init, eta, process time T in GD steps)
    "shallow d=1 from (2, 0), Phi=1": (["model.width=1", "model.init.scheme=explicit", "model.init.a0=[2.0]",
                                        "model.init.b0=[0.0]"], 0.46, 20.0),
    "shallow d=10, imbalanced scale 1.5": (["model.width=10", "model.init.scale=1.5"], 0.5, 20.0),
    "digits MLP 64-16-10 tanh, 200 images": (["model.kind=mlp", "model.widths=[16]", "model.activation=tanh",
                                              "data.n_train=200"], 0.2, 2.0),
}


def run(args: list[str], root: Path) -> dict:
    started = time.perf_counter()
    assert main(["train", *args, f"output.root={root}"]) in (0, 1), args
    wall = time.perf_counter() - started
    (folder,) = sorted((root / "train").iterdir())[-1:]
    return {**json.loads((folder / "summary.json").read_text()), "wall": wall}


def unit_costs(args: list[str]) -> tuple[float, float]:
    """Median seconds of one gradient and of one HVP of this model at its initial point."""
    from shallownet.config import RunConfig, load_config
    from shallownet.curvature import HessianOperator
    from shallownet.training import build

    module = build(load_config(RunConfig, None, args)).module
    params = [p for p in module.parameters() if p.requires_grad]
    x, y = module.curvature_data()
    op = HessianOperator(module.model, module.loss_fn, (x, y), chunk_size=module.chunk_size)
    vector = torch.randn(sum(p.numel() for p in params), dtype=params[0].dtype)

    def timed(fn) -> float:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times[5:])

    def gradient():
        loss = module.loss_fn(module.model(x), y)
        torch.autograd.grad(loss, params)

    return timed(gradient), timed(lambda: op(vector))


def main_bench() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, float64; T in GD steps, the sharpness monitor off")
    header = (f"{'case':38s} {'eta':>5s} {'T':>5s} {'GD s':>7s} {'CF s':>7s} {'CF/GD':>7s} {'velocities':>10s} "
              f"{'HVPs':>6s} {'pairs':>6s} {'rejected':>8s} {'CF/T in HVPs':>12s} {'CF/T in grads':>13s}")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        run([*OFF, "train.max_steps=2"], Path(tmp) / "warm-up")  # Lightning's first import is no run's cost
        for name, (model_args, eta, horizon) in CASES.items():
            common = [*model_args, *OFF, f"train.max_time={horizon}", "train.max_steps=100000"]
            gd = run([*common, "optim.method=gd", f"optim.lr={eta}"], Path(tmp) / "gd")
            cf = run([*common, "optim.method=central_flow", f"optim.lr={eta}"], Path(tmp) / "cf")
            grad_s, hvp_s = unit_costs(model_args)
            per_time = cf["wall"] / max(cf["time"], 1e-300)
            print(f"{name:38s} {eta:5.2f} {cf['time']:5.3g} {gd['wall']:7.3f} {cf['wall']:7.3f} "
                  f"{cf['wall'] / gd['wall']:7.1f} {cf['velocities']:10d} {cf['hvps']:6d} {cf['third_order_pairs']:6d} "
                  f"{cf['rejected']:8d} {per_time / hvp_s:12.3g} {per_time / grad_s:13.3g}")


if __name__ == "__main__":
    main_bench()
