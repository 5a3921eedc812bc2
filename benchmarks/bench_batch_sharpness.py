"""The cost of one batch-sharpness estimate (100 batches) with the project's vmapped estimator against a loop
of double backwards, the way the reference code (arseniqum/edge-of-stochastic-stability) takes it: per sampled
batch, g_B = grad(L_B, create_graph=True), then grad(g_B . v) with v = g_B detached. Side by side, same batches.

On the digits MLP 64-32-10 tanh, 1000 images, 1/2 sum-over-classes MSE, float64, 1 thread, at the initial
point, for each batch size: median seconds (of --repeats) of

    vmapped       shallownet.curvature.batch.per_batch(lambda_max=False): per batch g_B^T H_B g_B, g_B^T H g_B
                  (the GNI numerator, a full-batch HVP per batch) and |g_B|^2, vmapped forward-over-reverse
    loop          the same three per batch by double backwards (one on L_B, one on the full L along g_B)
    ratio only    only g_B^T H_B g_B / |g_B|^2 (what the reference code computes): vmapped as per_batch takes
                  it, and by a loop of double backwards
    monitor       batch.estimate(): the vmapped products plus lambda_max(H_B) of each batch (Lanczos above 256
                  parameters), the monitor's whole measurement less the one-batch step_sharpness

each also in units of one full-batch HVP (a fresh double backward over the 1000 rows: forward, backward,
second backward), and the loop/vmapped ratio. Checks that both give the same ratios to round-off.

    python benchmarks/bench_batch_sharpness.py [--batch-sizes 8 32 128] [--repeats 5]   # ~2 min, 2-core CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import grad, jvp, vmap

from shallownet.config import RunConfig, load_config
from shallownet.curvature import batch
from shallownet.curvature.operators import flat_parameters
from shallownet.training import build

ARGS = ["model.kind=mlp", "model.widths=[32]", "model.activation=tanh", "data.kind=digits", "data.n_train=1000",
        "loss=half_sum_mse", "train.dtype=float64"]


def timed(fn, repeats: int):
    """Median seconds of `repeats` calls after one warm-up call, and the last call's result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def double_backward_loop(model, loss_fn, x, y, batches, with_noise: bool):
    """Per batch: g_B with create_graph, then grad(g_B . g_B) on L_B (and on the full L: the GNI numerator)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ratios, noises = [], []
    for rows in batches:
        g_b = torch.autograd.grad(loss_fn(model(x[rows]), y[rows]), params, create_graph=True)
        v = [g.detach() for g in g_b]
        h_b_v = torch.autograd.grad(sum((g * u).sum() for g, u in zip(g_b, v, strict=True)), params)
        squared = sum((u * u).sum() for u in v)
        ratios.append(sum((h * u).sum() for h, u in zip(h_b_v, v, strict=True)) / squared)
        if with_noise:
            g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
            h_v = torch.autograd.grad(sum((gi * u).sum() for gi, u in zip(g, v, strict=True)), params)
            noises.append(sum((h * u).sum() for h, u in zip(h_v, v, strict=True)))
    return torch.stack(ratios), (torch.stack(noises) if with_noise else None)


def vmapped_ratios(model, loss_fn, x, y, batches):
    """g_B^T H_B g_B / |g_B|^2 per batch, per_batch's own products less the full-batch HVP of the GNI."""
    loss, theta = batch._flat_loss(model, loss_fn), flat_parameters(model)

    def ratio(xb, yb):
        g_b = grad(loss)(theta, xb, yb)
        _, h_b = jvp(lambda t: grad(loss)(t, xb, yb), (theta,), (g_b,))
        return (g_b @ h_b) / (g_b @ g_b)

    return vmap(ratio, chunk_size=batch.VMAP_CHUNK)(x[batches], y[batches])


def one_size(model, loss_fn, x, y, batches, repeats: int):
    """Seconds of each way on these batches, the largest relative difference between the ways' per-batch values
    (asserted round-off), and the batch sharpness."""
    seconds = {}
    seconds["vmapped"], parts = timed(lambda: batch.per_batch(model, loss_fn, x, y, batches, lambda_max=False),
                                      repeats)
    seconds["loop"], (ratios, noises) = timed(lambda: double_backward_loop(model, loss_fn, x, y, batches, True),
                                              repeats)
    seconds["ratio_loop"], _ = timed(lambda: double_backward_loop(model, loss_fn, x, y, batches, False), repeats)
    seconds["ratio_vmapped"], alone = timed(lambda: vmapped_ratios(model, loss_fn, x, y, batches), repeats)
    seconds["monitor"], _ = timed(lambda: batch.estimate(model, loss_fn, x, y, batches), max(1, repeats // 2))
    diff = max(float(((other - parts[name]) / parts[name]).abs().max())
               for other, name in ((ratios, "ratio"), (alone, "ratio"), (noises, "noise")))
    assert diff < 1e-10, diff  # the same ratios and GNI numerators to round-off
    return seconds, diff, float(parts["ratio"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    module = build(load_config(RunConfig, None, ARGS)).module
    model, loss_fn = module.model, module.loss_fn
    x, y = module.curvature_data()
    params = [p for p in model.parameters() if p.requires_grad]
    vector = [torch.randn_like(p) for p in params]

    def full_hvp():
        g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
        return torch.autograd.grad(sum((gi * u).sum() for gi, u in zip(g, vector, strict=True)), params)

    hvp_s, _ = timed(full_hvp, 10 * args.repeats)
    print(f"torch {torch.__version__}, 1 thread, float64; digits MLP 64-32-10 tanh ({sum(p.numel() for p in params)} "
          f"parameters), {len(x)} images, MSE; {args.batches} batches per estimate, median of {args.repeats}")
    print(f"one full-batch HVP (double backward over {len(x)} rows): {hvp_s * 1e3:.2f} ms")
    print("seconds (in full-batch HVPs); ratio only: g_B^T H_B g_B / |g_B|^2 alone; with GNI: also g_B^T H g_B")
    print(f"{'b':>4} {'ratio only, vmapped':>21} {'ratio only, loop':>18} {'loop/vmap':>9} "
          f"{'with GNI, vmapped':>19} {'with GNI, loop':>18} {'loop/vmap':>9} {'monitor (+ lmax(H_B))':>22} "
          f"{'max rel diff':>12} {'batch sharpness':>15}")
    generator = torch.Generator().manual_seed(0)
    for size in args.batch_sizes:
        batches = batch.random_batches(len(x), size, args.batches, generator)
        seconds, diff, value = one_size(model, loss_fn, x, y, batches, args.repeats)
        cell = {name: f"{t:.3f} ({t / hvp_s:.0f})" for name, t in seconds.items()}

        print(f"{size:>4} {cell['ratio_vmapped']:>21} {cell['ratio_loop']:>18} "
              f"{seconds['ratio_loop'] / seconds['ratio_vmapped']:>9.2f} {cell['vmapped']:>19} {cell['loop']:>18} "
              f"{seconds['loop'] / seconds['vmapped']:>9.2f} {cell['monitor']:>22} {diff:>12.1e} {value:>15.6f}")

if __name__ == "__main__":
    main()
