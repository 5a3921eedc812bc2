"""Full-batch runs under Lightning's DDP: data shards, exact reductions, one run folder.

A run on W processes (torchrun, SLURM's srun, or Lightning's own launcher with `trainer.devices=W
trainer.strategy=ddp`) is the same run as on one process, up to the order of floating-point sums:

- every process loads the whole data set and keeps one contiguous block of it (`shard`): global rank r of
  W takes rows [r N / W, (r + 1) N / W) up to rounding, the first N mod W ranks one row more; no row is
  repeated (padding would change the full-batch loss) and chunk i's weight is n_i / N with the GLOBAL N;
- gradients, losses and counts are summed over the ranks by `all_reduce_sum` (one all-reduce for a
  list of tensors); DDP's own gradient averaging is not used;
- Hessian-vector products are taken on the unwrapped module over this rank's shard and summed with one
  all-reduce per product (`shallownet.curvature.distributed.ShardedHessianOperator`); every rank runs the
  same eigensolver from the same start on the same (all-reduced) products, so all ranks agree on the
  eigenvalues (checked per solve);
- only global rank 0 creates the run folder and writes to it; the others learn its path (`run_folder`).

The CLI starts the process group itself when an external launcher (torchrun, srun, LSF, MPI) started
this process as one of several (`process_group`), so that rank 0 can create the run folder and send its
path to the others before Lightning's Trainer exists; Lightning then uses that group. Under Lightning's
own launcher the rank-0 process is the one the user started: it creates the folder, and the processes
Lightning starts for the other ranks (copies of its command line and environment) find its path in the
environment variable RUN_DIR_ENV.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

RUN_DIR_ENV = "SHALLOWNET_DDP_RUN_DIR"  # set by rank 0 for the processes Lightning's launcher starts
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true")


# --- who is running ------------------------------------------------------------------------------------

def external_environment():
    """Lightning's cluster environment when an external launcher (torchrun, srun, LSF's jsrun, mpirun)
    started this process as one of several; None otherwise. Same detection order as Lightning's Trainer."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for kind in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if kind.detect():
            environment = kind()
            return environment if environment.world_size() > 1 else None
    return None


def launched_layout() -> tuple[int, int] | None:
    """(processes per node, nodes) as the external launcher set them up, where it says; else None."""
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:  # torchrun
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        return local, max(1, world // local)
    if "SLURM_NTASKS" in env and "SLURM_NNODES" in env:
        nodes = int(env["SLURM_NNODES"])
        return max(1, int(env["SLURM_NTASKS"]) // nodes), nodes
    return None


def is_launched_child() -> bool:
    """A process Lightning's launcher started for a rank > 0 of a run whose rank 0 set RUN_DIR_ENV."""
    return RUN_DIR_ENV in os.environ and os.environ.get("LOCAL_RANK", "0") != "0"


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Global rank 0, or no distributed run at all: the process that writes the run folder and prints."""
    if is_launched_child():
        return False
    if initialized():
        return dist.get_rank() == 0
    environment = external_environment()
    return environment is None or environment.global_rank() == 0


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """Inside: the default process group, started here when an external launcher started this process as
    one of several (gloo on the CPU, nccl on CUDA) and destroyed on exit; otherwise nothing happens."""
    environment = external_environment()
    if environment is None or dist.is_initialized():
        yield
        return
    backend = "gloo"
    if device.startswith("cuda"):
        backend = "nccl"
        torch.cuda.set_device(environment.local_rank())
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    dist.init_process_group(backend, rank=environment.global_rank(), world_size=environment.world_size())
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_folder(create: Callable[[], Path]) -> Path:
    """The run folder all ranks share: created by `create()` on global rank 0 only, its path sent to the
    others (by broadcast, or by RUN_DIR_ENV to the processes of Lightning's launcher). An error creating
    it is raised on every rank, so none waits for a folder that will not come."""
    if is_launched_child():
        return Path(os.environ[RUN_DIR_ENV])
    if not initialized():
        return create()
    message: list = [None, None]
    if dist.get_rank() == 0:
        try:
            message[0] = str(create())
        except Exception as error:  # noqa: BLE001  (sent to the other ranks, then raised here too)
            message[1] = error
    dist.broadcast_object_list(message, src=0)
    if message[1] is not None:
        raise message[1]
    return Path(message[0])


@contextmanager
def children_find(run_dir: Path, trainer) -> Iterator[None]:
    """RUN_DIR_ENV set to run_dir while `trainer` may start the other ranks' processes (Lightning's launcher
    copies this process's environment into them); restored on exit."""
    strategy = trainer.strategy
    environment = getattr(strategy, "cluster_environment", None)
    launches = trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally
    if not launches or is_launched_child():
        yield
        return
    saved = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(Path(run_dir).resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = saved


def check_trainer(trainer) -> None:
    """Refuse what would be silently wrong: several processes run by another strategy than DDP started as
    scripts (ddp_spawn / ddp_fork run the training in processes whose results do not come back whole;
    FSDP and DeepSpeed shard the parameters, which the curvature monitors need whole)."""
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = trainer.strategy
    if trainer.world_size > 1 and not (isinstance(strategy, DDPStrategy)
                                       and isinstance(strategy.launcher, _SubprocessScriptLauncher)):
        raise ValueError(f"a full-batch run on {trainer.world_size} processes needs Lightning's DDP strategy "
                         f"started as scripts (strategy 'ddp'), not {type(strategy).__name__}")


# --- shards --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """This rank's block of the data: rows [start, start + rows) of total (and of the test set)."""

    rank: int
    world: int
    start: int
    rows: int
    total: int
    test_start: int = 0
    test_rows: int = 0
    test_total: int = 0


def block(total: int, rank: int, world: int) -> tuple[int, int]:
    """(start, rows) of rank's contiguous block: sizes differ by at most one, the larger ones first."""
    base, extra = divmod(total, world)
    return rank * base + min(rank, extra), base + (rank < extra)


def shard(data, rank: int, world: int):
    """(this rank's part of a FullBatchData, its Shard). Every rank gets at least one training row."""
    from shallownet.registry import FullBatchData

    total = len(data.x)
    if total < world:
        raise ValueError(f"the data has {total} training rows, fewer than the {world} processes: every "
                         "process needs at least one")
    start, rows = block(total, rank, world)
    test_total = 0 if data.x_test is None else len(data.x_test)
    test_start, test_rows = block(test_total, rank, world)
    part = FullBatchData(data.x[start:start + rows], data.y[start:start + rows],
                         None if data.x_test is None else data.x_test[test_start:test_start + test_rows],
                         None if data.y_test is None else data.y_test[test_start:test_start + test_rows],
                         target=data.target)
    return part, Shard(rank, world, start, rows, total, test_start, test_rows, test_total)


# --- reductions ----------------------------------------------------------------------------------------

def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over all ranks, with one all-reduce of their concatenation (in their common
    floating dtype, float64 where one is an integer); new tensors in the original dtypes and shapes."""
    tensors = list(tensors)
    if not tensors:
        return []
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 and tensors[0].is_floating_point() else torch.float64
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view(t.shape).to(t.dtype))
        offset += t.numel()
    return out
