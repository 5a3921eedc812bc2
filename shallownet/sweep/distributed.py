"""Splitting a sweep over torch.distributed ranks (gloo on CPU, nccl on GPUs) and gathering it on rank 0.

Launch with torchrun; the sweep notices the WORLD_SIZE that torchrun sets:

    torchrun --nproc_per_node=2 -m shallownet sweep configs/sweep.yaml [key=value ...]

Every run is independent and computed by the same arithmetic wherever it lands, so the merged result
equals the single-process one bit for bit.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch.distributed as dist

from shallownet.sweep.engine import Runs
from shallownet.sweep.kernel import BLOCK

PIECE = 4 * BLOCK  # runs are dealt to ranks in pieces of this many, cyclically: cheap and dear parts mix


@contextmanager
def session(device: str):
    """Yield (rank, world size, this rank's device); a process group exists inside when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device.startswith("cuda"):
        import torch

        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)  # gather_object over nccl sends through the current device
        dist.init_process_group("nccl")
    else:
        import numba

        # The ranks on one machine share its cores.
        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS // local_world))
        dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), world, device
    finally:
        dist.destroy_process_group()


def share(n_runs: int, rank: int, world: int) -> np.ndarray:
    """Flat indices of the runs that `rank` simulates: every world-th piece of PIECE runs."""
    pieces = np.arange(rank, -(-n_runs // PIECE), world)
    flat = (pieces[:, None] * PIECE + np.arange(PIECE)).ravel()
    return flat[flat < n_runs]


def gather(runs: Runs, flat: np.ndarray, n_runs: int, rank: int, world: int) -> Runs | None:
    """All ranks' runs merged on rank 0 in flat-index order (None on the other ranks); runs that no rank
    simulated (an interrupted sweep) hold NaN and steps -1."""
    if world == 1 and flat.size == n_runs:
        return runs
    parts = [(flat, runs)]
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object((flat, runs), parts, dst=0)
        if rank != 0:
            return None
    fields = {}
    for name, example in vars(runs).items():
        missing = -1 if np.issubdtype(example.dtype, np.integer) else np.nan
        merged = np.full((n_runs, *example.shape[1:]), missing, dtype=example.dtype)
        for indices, part in parts:
            merged[indices] = getattr(part, name)
        fields[name] = merged
    return type(runs)(**fields)
