"""Process-group plumbing for multi-GPU runs: torchrun, or several SLURM tasks.

``torchrun --nproc_per_node=N -m sam.cli ...`` starts N processes whose environment
holds RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init`` joins them
(nccl on CUDA, each rank on cuda:LOCAL_RANK; gloo on CPU). Every rank holds the whole
uint8 training set and draws the same seeded permutation; ``ShardedLoader`` hands it
its contiguous slice of every global batch, so the global batch stays ``batch_size``
and the data order is the one of a single-process run (AutoAugment's CPU loader then
fetches and augments only the rank's rows). Only rank 0 writes
(``is_main``). Outside a launcher (WORLD_SIZE unset or 1) every helper is a no-op.

SAM's gradient averaging under DDP lives in ``sam.optim.sam_step`` (it sees the
DistributedDataParallel wrapper); this module only sets up and reduces metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sam.errors import UserError
from sam.runtime import rng_state, set_rng_state

# Hydra overrides for ranks > 0 under torchrun: no run directory, no .hydra/, no log
# file and no console logging of their own (rank 0 tells them its run directory).
QUIET_RANK_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null",
                        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (or the SLURM/submitit export below); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else env_rank()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints, logs and writes files."""
    return rank() == 0


def adopt_submitit_env() -> None:
    """In a SLURM job of the submitit launcher with several tasks (tasks_per_node > 1,
    one per GPU), export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as
    torchrun would, so that the tasks of one job train together with DDP."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if env_rank() > 0:  # Hydra set up logging for every task; rank 0 speaks for the run
            logging.getLogger("sam").setLevel(logging.ERROR)


def check_config(cfg: Any, device: torch.device) -> None:
    """UserError (one line) for multi-process settings that cannot run: sync_bn off
    CUDA, a batch the ranks cannot split evenly, an m that does not fit a rank's batch."""
    if cfg.get("sync_bn") and device.type != "cuda":
        raise UserError("sync_bn=true needs CUDA (SyncBatchNorm has no CPU kernel): use "
                        "sync_bn=false on cpu")
    world = env_world_size()
    if world <= 1:
        return
    if cfg.batch_size % world:
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by the {world} "
                        f"processes: use a multiple of {world} (the global batch is split "
                        "evenly over the ranks)")
    per_rank = cfg.batch_size // world
    if cfg.m is None:
        return
    if cfg.optim.name == "sam" and cfg.get("ddp_sync_ascent"):
        if cfg.m == cfg.batch_size:  # plain SAM on the global batch, as m=null
            return
        raise UserError(f"m={cfg.m} with ddp_sync_ascent=true: the synchronised ascent is "
                        "plain SAM on the global batch; use m=null (or ddp_sync_ascent=false "
                        "for m-sharpness)")
    if per_rank % cfg.m:
        raise UserError(f"m={cfg.m} does not divide the per-rank batch {per_rank} "
                        f"(batch_size={cfg.batch_size} over {world} processes): pick m from "
                        f"its divisors, or m=null for one shard per rank")


def describe(cfg: Any) -> dict[str, Any]:
    """The multi-process setting of a run, for results.json (m-sharpness bookkeeping:
    without ddp_sync_ascent each rank is a shard of at most ``per_rank_batch``)."""
    world = world_size()
    per_rank = cfg.batch_size // world
    sync = bool(cfg.get("ddp_sync_ascent", False))
    return {"world_size": world, "backend": dist.get_backend(), "per_rank_batch": per_rank,
            "sync_ascent": sync, "sync_bn": bool(cfg.get("sync_bn", False)),
            "effective_m": effective_m(cfg)}


def effective_m(cfg: Any, world: int | None = None) -> int:
    """The examples behind one SAM eps (and, for both optimizers, one BatchNorm shard) in
    a run of ``world`` processes (default: this one's): m, or the per-rank batch (the
    whole batch in one process); with SAM's ``ddp_sync_ascent`` the global batch."""
    world = world_size() if world is None else world
    sam = (cfg.get("optim") or {}).get("name") == "sam"
    if world > 1 and sam and cfg.get("ddp_sync_ascent", False):
        return cfg.batch_size
    return local_m(cfg) or cfg.batch_size // world


def local_m(cfg: Any) -> int | None:
    """The m to pass to sam_step: None (one shard) for m=null or m=batch_size."""
    return None if cfg.m is None or cfg.m == cfg.batch_size else cfg.m


def init(device: torch.device) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1; return this rank's
    device (cuda:LOCAL_RANK on CUDA). A no-op returning ``device`` otherwise."""
    world = env_world_size()
    if world <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"device={device} under torchrun: use device=cuda or auto "
                            "(each rank takes cuda:LOCAL_RANK)")
        count = torch.cuda.device_count()
        if local >= count:
            raise UserError(f"local rank {local} but only {count} GPU(s) visible: use "
                            f"torchrun --nproc_per_node={count} or fewer")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)  # env:// rendezvous from the launcher's variables
    return device


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order, on every rank; None outside a process group."""
    if not is_distributed():
        return None
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_across_ranks(*values: Any) -> tuple[Any, ...]:
    """Sum 0-d tensors and numbers over all ranks with one all-reduce (float64).

    Returns the values unchanged outside a process group; otherwise floating tensors
    come back as float64 tensors, integer tensors as int64 tensors, numbers as int or
    float."""
    if not is_distributed():
        return values
    device = next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device).reshape(())
                        for v in values])
    dist.all_reduce(flat)
    out: list[Any] = []
    for v, s in zip(values, flat, strict=True):
        if isinstance(v, Tensor):
            out.append(s if v.is_floating_point() else s.round().long())
        else:
            out.append(int(round(s.item())) if isinstance(v, int) else s.item())
    return tuple(out)


def first_step_across_ranks(step: Tensor) -> Tensor:
    """Device scalar: the smallest non-zero value of the device scalar ``step`` over all
    ranks, 0 when every rank holds 0 (the first step at which some rank met a NaN/inf
    loss). No host read: under NCCL the all-reduce is queued on the device like a kernel."""
    if not is_distributed():
        return step
    never = torch.iinfo(torch.long).max
    t = torch.where(step > 0, step, never).reshape(1)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return torch.where(t == never, 0, t)[0]


def seed_rank(seed: int) -> None:
    """Ranks > 0 reseed torch's generators so that dropout/shake noise differs between
    ranks as it does between the examples of one process (rank 0 keeps its stream)."""
    r = rank()
    if is_distributed() and r > 0:
        torch.manual_seed(((seed + 1) * 1_000_003 + r) % 2**63)


def rng_states(device: torch.device) -> list[dict] | None:
    """Every rank's ``rng_state`` (for the checkpoint); None outside a process group."""
    if not is_distributed():
        return None
    return all_gather_object(rng_state(device))


def checkpoint_world_size(state: dict) -> int:
    """How many processes wrote a checkpoint: one ``rng_states`` entry per rank (None in
    one process)."""
    return len(state.get("rng_ranks") or []) or 1


def restore_rng(states: list[dict] | None, device: torch.device) -> None:
    """Set this rank's RNG from ``rng_states`` of a checkpoint of the same world size."""
    if not is_distributed() or not states or len(states) != world_size():
        return
    set_rng_state(states[rank()], device)


def wrap(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` (after SyncBatchNorm conversion when
    asked) inside a process group; ``model`` itself otherwise. DDP's constructor
    broadcasts rank 0's parameters and buffers, so all ranks start identical."""
    if not is_distributed():
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class ShardedLoader:
    """This rank's contiguous slice of every batch of ``loader``.

    With W ranks, rank r gets rows [r B/W, (r+1) B/W) of a batch of B (training batches
    are full and B % W == 0; an uneven last evaluation batch is split by
    ``tensor_split`` and an empty slice is skipped). Rank r's slice is then shard r of
    ``sam_step(..., m=B/W)`` in a single process on the same global batch.

    A loader with ``set_shard(rank, world)`` (``AutoAugmentLoader``) is told to fetch and
    augment only those rows and yields the same slices itself; any other loader yields
    global batches that are sliced here.
    """

    def __init__(self, loader: Any, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world
        self.loader_shards = hasattr(loader, "set_shard")
        if self.loader_shards:
            loader.set_shard(rank, world)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.loader_shards:
            yield from self.loader
            return
        for x, y in self.loader:
            xs, ys = x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]
            if len(ys):
                yield xs, ys


def shard(loader: Any) -> Any:
    """``ShardedLoader`` for this rank inside a process group; ``loader`` otherwise."""
    return ShardedLoader(loader, rank(), world_size()) if is_distributed() else loader
