"""Top Hessian eigenvalue of a 64-256-256-10 tanh MLP (85k parameters, float64) on scikit-learn's digits
(1797 samples, full batch, cross-entropy): shallownet against PyHessian and hessian-eigenthings.

The point: plain GD with step 0.5 from PyTorch's default initialisation (seed 0) for 300 steps; stable
all along (lr * sharpness stays below 0.6, printed); --lr and --steps choose another point. Every method
runs at that point and is checked against scipy's eigsh(which="LA", tol=1e-14) on our HVP; "residual" is
|H v - lam v| / |lam| recomputed with one HVP of ours (not counted) for the vector each method returns.
Peers run at their defaults and at their best settings (the cheapest that reach residual 1e-6, found
with an oracle where their own stopping rule cannot express it). Nothing is cached between runs.

    python benchmarks/bench_curvature.py            # about 1-3 minutes on 2 cores
    python benchmarks/bench_curvature.py --quick    # smaller model and trajectory: a smoke test

The peers come with the `bench` extra (pip install -e '.[bench]'); without them their rows are skipped,
said so at the start. scikit-learn (the digits) is needed in any case.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg as sla
import torch
import torch.nn.functional as F

from extensions.mlp import load_digits, mlp
from shallownet.curvature import EigenTracker, HessianOperator, power_iteration, top_eigenvalue

TARGET = 1e-6  # relative residual every method has to reach
POWER_CAP = 600  # HVPs allowed to power iteration at "best" settings
PEERS = {"pyhessian": "pyhessian", "hessian_eigenthings": "hessian-eigenthings"}  # module: distribution


@dataclass
class Row:
    method: str
    settings: str
    n_hvp: float
    seconds: float
    value: float
    residual: float = float("nan")
    error: float = float("nan")


class Counter:
    """Counts calls of an HVP-like function; optionally stops at the first iterate with residual <= TARGET."""

    class Reached(Exception):
        def __init__(self, value):
            self.value = value

    def __init__(self, oracle_stop: bool = False):
        self.calls, self.oracle_stop, self.vector = 0, oracle_stop, None

    def seen(self, v_flat: torch.Tensor, hv_flat: torch.Tensor) -> None:
        self.calls += 1
        if self.oracle_stop:
            value = float(v_flat @ hv_flat / (v_flat @ v_flat))
            residual = float(torch.linalg.vector_norm(hv_flat - value * v_flat) / torch.linalg.vector_norm(v_flat))
            if residual <= TARGET * abs(value):
                self.vector = v_flat / torch.linalg.vector_norm(v_flat)
                raise Counter.Reached(value)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).to(torch.float64)


def median_time(fn: Callable, repeats: int):
    """(median seconds, last result) over `repeats` runs: the machine is shared, one run can be unlucky."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# --- the point ---------------------------------------------------------------------------------------

def gradient_descent(model, data, lr: float, steps: int, on_step: Callable | None = None) -> None:
    inputs, targets = data
    params = list(model.parameters())
    for step in range(steps):
        if on_step is not None:
            on_step(step)
        grads = torch.autograd.grad(F.cross_entropy(model(inputs), targets), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g, alpha=-lr)


def prepare_point(sizes, lr, steps, data):
    model = mlp(sizes, "tanh", seed=0)
    op = HessianOperator(model, F.cross_entropy, data)
    tracker, worst = EigenTracker(tol=1e-4), 0.0

    def watch(step):  # sharpness every 50 steps, loosely, to show the step size is stable
        nonlocal worst
        if step % 50 == 0:
            worst = max(worst, lr * tracker.solve(op).value)

    start = time.perf_counter()
    gradient_descent(model, data, lr, steps, watch)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(data[0]), data[1]))
    print(f"point: {steps} GD steps, lr {lr}, train loss {loss:.4g}, max lr*sharpness on the way {worst:.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    return model, op


def reference(op) -> tuple[float, float, int, float]:
    """Top eigenvalue by ARPACK (which='LA', tol=1e-14) on our HVP; also lambda_2 for the gap."""
    calls = 0

    def matvec(x):
        nonlocal calls
        calls += 1
        return op(torch.from_numpy(np.ascontiguousarray(x.reshape(-1))).to(op.dtype)).numpy()

    operator = sla.LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
    start = time.perf_counter()
    values = sla.eigsh(operator, k=2, which="LA", tol=1e-14, v0=np.ones(op.dim), return_eigenvectors=False)
    return float(max(values)), float(min(values)), calls, time.perf_counter() - start


# --- the methods -------------------------------------------------------------------------------------

def ours(op, repeats) -> list:
    rows = []
    for settings, hvp in [("defaults (tol 1e-6), double-backward HVP, graph kept", op),
                          ("defaults, forward-over-reverse HVP", _with_method(op, "forward-over-reverse"))]:
        seconds, result = median_time(lambda hvp=hvp: top_eigenvalue(hvp), repeats)
        rows.append((Row("shallownet lanczos", settings, result.n_hvp, seconds, result.value), result.vector))
    seconds, result = median_time(lambda: power_iteration(op, max_iter=POWER_CAP), 1)
    rows.append((Row("shallownet power", f"tol 1e-6, max_iter {POWER_CAP}", result.n_hvp, seconds, result.value),
                 result.vector))
    return rows


def _with_method(op, method):
    other = copy.copy(op)
    other.method = method
    return other


def tracked(model, data, lr, every, n_logged) -> Row:
    """Warm-started tracking along the GD trajectory: mean HVPs per logged step (the cold first solve
    at the starting point excluded), and the worst recomputed residual over the logged steps."""
    model = copy.deepcopy(model)
    op = HessianOperator(model, F.cross_entropy, data)
    tracker = EigenTracker(tol=TARGET)
    tracker.solve(op)  # cold, at the starting point
    counts, seconds, worst = [], 0.0, 0.0
    for _ in range(n_logged):
        gradient_descent(model, data, lr, every)
        start = time.perf_counter()
        result = tracker.solve(op)
        seconds += time.perf_counter() - start
        counts.append(result.n_hvp)
        worst = max(worst, true_residual(op, result.value, result.vector))
    cold = top_eigenvalue(op, tol=1e-10, seed=7)  # is the tracked one still the top one?
    return Row("shallownet tracked", f"warm start, log every {every} GD step(s), {n_logged} logs",
               statistics.mean(counts), seconds / n_logged, result.value, worst, abs(result.value / cold.value - 1))


def pyhessian_rows(model, data, repeats) -> list:
    # pyhessian/__init__ rebinds the name pyhessian.hessian to the class: fetch the module itself.
    ph = importlib.import_module("pyhessian.hessian")

    original = ph.hessian_vector_product
    rows = []
    for settings, oracle, kwargs, reps in [("defaults (maxIter 100, tol 1e-3)", False, {}, repeats),
                                           (f"best: stopped at first residual <= 1e-6 (oracle), cap {POWER_CAP}",
                                            True, {"maxIter": POWER_CAP, "tol": 0.0}, 1)]:
        counter = Counter(oracle)

        def counted(grads, params, v, counter=counter):
            hv = original(grads, params, v)
            counter.seen(flat(v), flat(hv))
            return hv

        def run(kwargs=kwargs, counter=counter):
            counter.calls = 0
            torch.manual_seed(0)  # PyHessian draws its start vector from the global generator
            mode = model.training
            try:
                with warnings.catch_warnings():  # its backward(create_graph=True) warns of the .grad leak
                    warnings.simplefilter("ignore", UserWarning)
                    engine = ph.hessian(model, F.cross_entropy, data=data, cuda=False)
                values, vectors = engine.eigenvalues(**kwargs)
                value, vector = values[0], flat(vectors[0])
                return value, vector / torch.linalg.vector_norm(vector)
            except Counter.Reached as reached:
                return reached.value, counter.vector
            finally:  # PyHessian leaves a graph in .grad (loss.backward(create_graph=True)) and sets eval()
                model.zero_grad(set_to_none=True)
                model.train(mode)

        ph.hessian_vector_product = counted
        try:
            seconds, (value, vector) = median_time(run, reps)
        finally:
            ph.hessian_vector_product = original
        rows.append((Row("pyhessian power", settings, counter.calls, seconds, value), vector))
    return rows


def eigenthings_rows(model, data, repeats) -> list:
    import hessian_eigenthings as he

    operator = he.HessianOperator(model, [data], he.supervised_loss(F.cross_entropy))
    counter = Counter()
    matvec = operator.matvec
    operator.matvec = lambda v: _seen_matvec(counter, matvec, v)
    rows = []

    def record(method, settings, fn, reps):
        def run():
            counter.calls = 0
            return fn()
        seconds, (value, vector) = median_time(run, reps)
        rows.append((Row(method, settings, counter.calls, seconds, value), vector))

    def he_lanczos(**kwargs):
        result = he.lanczos(operator, seed=0, **kwargs)
        return float(result.eigenvalues[0]), result.eigenvectors[0]

    def he_power(**kwargs):
        value, vector, _, _, _ = he.power_iteration_one(operator, seed=0, **kwargs)
        return value, vector

    record("eigenthings lanczos", "defaults (k 10, max_iter 20, which LM, tol 1e-4)", he_lanczos, repeats)
    krylov = _smallest_krylov_dimension(operator, max_dim=60)
    record("eigenthings lanczos", f"best: k 1, which LA, max_iter {krylov} (smallest reaching 1e-6)",
           lambda: he_lanczos(k=1, which="LA", max_iter=krylov, tol=TARGET), repeats)
    record("eigenthings power", "defaults (max_iter 100, tol 1e-4)", he_power, 1)
    record("eigenthings power", f"best: tol 1e-6, max_iter {POWER_CAP}",
           lambda: he_power(tol=TARGET, max_iter=POWER_CAP), 1)
    return rows


def _seen_matvec(counter, matvec, v):
    hv = matvec(v)
    counter.seen(v, hv)
    return hv


def _smallest_krylov_dimension(operator, max_dim: int) -> int:
    """The fewest Lanczos steps whose top Ritz pair has residual <= 1e-6, read off one long run from the
    same start vector eigenthings' lanczos(seed=0) uses (a prefix of a Lanczos run is a shorter run)."""
    import hessian_eigenthings as he

    generator = torch.Generator(device="cpu").manual_seed(0)
    start = torch.randn(operator.size, dtype=operator.dtype, generator=generator)
    run = he.lanczos_tridiagonal(operator, start, max_dim, reorthogonalize=True)
    alphas, betas = run.alphas.double(), run.betas.double()
    for m in range(1, len(betas) + 1):
        tridiagonal = torch.diag(alphas[:m]) + torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)
        theta, s = torch.linalg.eigh(tridiagonal)
        if float(betas[m - 1] * s[-1, -1].abs()) <= TARGET * abs(float(theta[-1])):
            return m
    return max_dim


# --- cost of one HVP ---------------------------------------------------------------------------------

def cost_ratios(model, data, repeats: int) -> dict[str, float]:
    """Median milliseconds of a full-batch gradient and of one HVP per method, interleaved."""
    inputs, targets = data
    params = list(model.parameters())
    ops = {method: HessianOperator(model, F.cross_entropy, data, method=method)
           for method in ("forward-over-reverse", "double-backward", "finite-difference")}
    v = torch.randn(ops["double-backward"].dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cached = torch.autograd.grad(F.cross_entropy(model(inputs), targets), params, create_graph=True)
    splits = [piece.view_as(p) for piece, p in zip(v.split([p.numel() for p in params]), params, strict=True)]
    tasks = {
        "gradient (autograd)": lambda: torch.autograd.grad(F.cross_entropy(model(inputs), targets), params),
        "gradient (HessianOperator.gradient)": ops["double-backward"].gradient,
        "HVP double-backward, first at a point (builds the graph)": lambda: (ops["double-backward"].release(),
                                                                          ops["double-backward"](v)),
        **{f"HVP {method}" + (", graph kept (rest of a solve)" if method == "double-backward" else ""):
           (lambda op=op: op(v)) for method, op in ops.items()},
        "HVP second backward only, graph kept (PyHessian)": lambda: torch.autograd.grad(
            cached, params, grad_outputs=splits, retain_graph=True),
    }
    times = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


# --- main --------------------------------------------------------------------------------------------

def true_residual(op, value, vector) -> float:
    vector = vector.to(op.dtype) / torch.linalg.vector_norm(vector)
    return float(torch.linalg.vector_norm(op(vector) - value * vector)) / abs(value)


def missing(modules) -> list[str]:
    """The modules of `modules` that cannot be imported (checked without importing them)."""
    return [module for module in modules if importlib.util.find_spec(module) is None]


def peer_rows(model, data, repeats, absent) -> list:
    rows = []
    for module, run in (("pyhessian", pyhessian_rows), ("hessian_eigenthings", eigenthings_rows)):
        if module not in absent:
            rows += run(model, data, repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64-32-32-10 MLP, 60 GD steps, 5 logged steps")
    # One thread by default: on a shared 2-core machine, two OpenMP threads competing with other jobs
    # made single timings swing by 5x; one thread gives stable, comparable numbers.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--lr", type=float, default=0.5, help="GD step size (default 0.5)")
    parser.add_argument("--steps", type=int, default=None, help="GD steps to the point (default 300, quick 60)")
    args = parser.parse_args()
    if missing(["sklearn"]):
        print("bench_curvature needs scikit-learn for the digits data: pip install -e '.[bench]'", file=sys.stderr)
        sys.exit(2)
    absent = missing(PEERS)
    if absent:  # checked now: finding out after minutes of our own rows helps no one
        print(f"note: {', '.join(PEERS[m] for m in absent)} not installed (pip install -e '.[bench]'): "
              "their rows are skipped")
    torch.set_num_threads(args.threads)
    sizes, steps, n_logged, repeats = ([64, 32, 32, 10], 60, 5, 1) if args.quick else ([64, 256, 256, 10], 300, 20, 3)
    steps, lr = args.steps or steps, args.lr
    total_start = time.perf_counter()
    data = load_digits()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MLP {sizes} tanh, float64, "
          f"{sum(p.numel() for p in mlp(sizes).parameters())} parameters; digits {tuple(data[0].shape)}")
    model, op = prepare_point(sizes, lr, steps, data)

    top, second, ref_calls, ref_seconds = reference(op)
    print(f"reference eigsh(which='LA', k=2, tol=1e-14): lambda_1 = {top:.12g}, lambda_2 = {second:.12g} "
          f"({ref_calls} HVPs, {ref_seconds:.1f} s)\n")

    rows = ours(op, repeats) + peer_rows(model, data, repeats, absent)
    table = []
    for row, vector in rows:
        row.residual = true_residual(op, row.value, vector)
        row.error = abs(row.value / top - 1)
        table.append(row)
    for every in (1, 10):
        table.append(tracked(model, data, lr, every, n_logged))
    print(f"{'method':<20} {'settings':<64} {'HVPs':>6} {'seconds':>8} {'rel. error':>10} {'residual':>9}  1e-6?")
    for row in table:
        reached = "yes" if row.residual <= TARGET else "NO"
        hvps = f"{row.n_hvp:.1f}" if isinstance(row.n_hvp, float) else str(row.n_hvp)
        print(f"{row.method:<20} {row.settings:<64} {hvps:>6} {row.seconds:>8.3f} {row.error:>10.1e} "
              f"{row.residual:>9.1e}  {reached}")
    print("(tracked rows: HVPs and seconds per logged step; residual = worst over the logged steps; "
          "rel. error = last step against a cold solve)\n")

    costs = cost_ratios(model, data, repeats=15 if not args.quick else 5)
    unit = costs["gradient (autograd)"]
    print("cost of one product, median ms (ratio to one full-batch autograd gradient):")
    for name, ms in costs.items():
        print(f"  {name:<52} {ms:8.2f} ms  {ms / unit:5.2f}x")
    print(f"\ntotal {time.perf_counter() - total_start:.0f} s")


if __name__ == "__main__":
    main()
