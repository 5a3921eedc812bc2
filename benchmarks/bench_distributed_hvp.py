"""Cost of one distributed Hessian-vector product (2 gloo processes) against one process, at the same data.

The model is the 64-256-256-10 tanh MLP of bench_curvature.py (85 002 parameters, float64) on N rows of
64 Gaussian features with 10 class labels (half_sum_mse). One process computes H v over all N rows; two
processes each compute it over their N/2 rows (shallownet.curvature.distributed.ShardedHessianOperator) and sum with
one all-reduce of the 85 002-entry product. Timed per product inside an eigen-solve (double backward with
the first-order graph kept, what SharpnessMonitor pays per HVP after the first at a point) and cold (the
first product at a point, which builds that graph). The all-reduce alone is timed on the same vector; its
share is all-reduce / distributed HVP. Every process uses `--threads` threads, so "1 process" and "2
processes" are compared at the same cores per process, and 1 process at twice the threads is printed too.

    python benchmarks/bench_distributed_hvp.py                  # N = 2000, 8000, 32000
    python benchmarks/bench_distributed_hvp.py --rows 1797 --repeats 5

More devices pay off when the local product shrinks faster than the all-reduce grows: for a fixed model
the all-reduce costs the same at every N, so the speed-up grows with the rows per device.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extensions.mlp import mlp  # noqa: E402
from shallownet.curvature import HessianOperator  # noqa: E402
from shallownet.curvature.distributed import ShardedHessianOperator  # noqa: E402
from shallownet.distributed import block  # noqa: E402
from shallownet.losses import half_sum_mse  # noqa: E402

SIZES = [64, 256, 256, 10]


def problem(rows: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, SIZES[0], generator=gen, dtype=torch.float64)
    y = torch.randint(0, SIZES[-1], (rows,), generator=gen)
    return mlp(SIZES, "tanh", seed=0), x, y


def time_products(op, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """(seconds of the first product at this point, median seconds of the next `repeats`)."""
    gen = torch.Generator().manual_seed(1)
    vectors = [torch.randn(op.dim, generator=gen, dtype=torch.float64) for _ in range(repeats + 1)]
    op.release()
    sync()
    start = time.perf_counter()
    op(vectors[0])
    sync()
    cold = time.perf_counter() - start
    warm = []
    for v in vectors[1:]:
        sync()
        start = time.perf_counter()
        op(v)
        sync()
        warm.append(time.perf_counter() - start)
    return cold, statistics.median(warm)


def one_process(rows: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    model, x, y = problem(rows)
    op = HessianOperator(model, half_sum_mse, (x, y))
    cold, warm = time_products(op, repeats)
    return {"cold": cold, "warm": warm, "dim": op.dim}


def worker(rank: int, world: int, rows: int, repeats: int, threads: int, port: int, out: str) -> None:
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, x, y = problem(rows)
        start, size = block(rows, rank, world)
        local = HessianOperator(model, half_sum_mse, (x[start:start + size], y[start:start + size]))
        op = ShardedHessianOperator(local, size, rows)
        cold, warm = time_products(op, repeats, sync=dist.barrier)
        vector = torch.ones(op.dim, dtype=torch.float64)
        reduces = []
        for _ in range(repeats):
            dist.barrier()
            begin = time.perf_counter()
            dist.all_reduce(vector)
            dist.barrier()
            reduces.append(time.perf_counter() - begin)
        barrier = []
        for _ in range(repeats):  # what the barriers around each timing add by themselves
            dist.barrier()
            begin = time.perf_counter()
            dist.barrier()
            barrier.append(time.perf_counter() - begin)
        if rank == 0:
            Path(out).write_text(json.dumps({"cold": cold, "warm": warm, "all_reduce": statistics.median(reduces),
                                             "barrier": statistics.median(barrier)}))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(rows: int, repeats: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        mp.spawn(worker, args=(2, rows, repeats, threads, free_port(), out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    args = parser.parse_args()
    print(f"MLP {'-'.join(map(str, SIZES))} tanh, float64, half_sum_mse; gloo on CPU, {args.threads} thread(s) per "
          f"process, {os.cpu_count()} cores visible; medians of {args.repeats} products\n")
    print("| rows N | 1 process | 1 process, 2x threads | 2 processes | speed-up | all-reduce | its share | "
          "cold: 1 process / 2 processes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rows in args.rows:
        single = one_process(rows, args.repeats, args.threads)
        double_threads = one_process(rows, args.repeats, 2 * args.threads)
        split = two_processes(rows, args.repeats, args.threads)
        reduce_s = max(split["all_reduce"] - split["barrier"], 0.0)
        hvp = max(split["warm"] - split["barrier"], 1e-12)
        print(f"| {rows} | {1e3 * single['warm']:.2f} ms | {1e3 * double_threads['warm']:.2f} ms | {1e3 * hvp:.2f} ms "
              f"| {single['warm'] / hvp:.2f}x | {1e3 * reduce_s:.3f} ms | {100 * reduce_s / hvp:.0f}% "
              f"| {1e3 * single['cold']:.1f} / {1e3 * split['cold']:.1f} ms |")
    print(f"\nproduct vector: {single['dim']} float64 entries ({single['dim'] * 8 / 1e6:.2f} MB) per all-reduce. "
          "A distributed HVP is the 1-process HVP on N/2 rows plus one all-reduce; more devices pay off "
          "while the all-reduce share stays small.")


if __name__ == "__main__":
    main()
