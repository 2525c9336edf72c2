"""Where and how this process runs, worked out once and handed down: ``Placement``.

``place(settings)`` resolves the device, reads the number of processes the launcher
started, works out each rank's batch and m, and refuses (one UserError line) what cannot
run there: settings that need CUDA, a batch the ranks cannot split, an m or micro-batch
that does not fit a rank's batch, a SAM variant that cannot run in this setting. The
runner joins the ranks afterwards (``joined``); nothing below it asks ``sam.distributed``
who it is again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from sam import distributed
from sam.errors import UserError
from sam.optim import variant_label
from sam.optim.accumulate import accumulate_problem
from sam.runtime import autocast_dtype, device_name, resolve_device
from sam.settings import Settings


@dataclass(frozen=True)
class Placement:
    """This process in its run: device, rank among ``world`` processes, its share of the
    batch, and the m that SAM's step and the records use."""

    device: torch.device
    rank: int
    world: int
    per_rank_batch: int
    local_m: int | None  # sam_step's m: None = one shard (m=null or m=batch_size)
    effective_m: int  # examples behind one eps / BatchNorm shard (results.json's m)
    sync_ascent: bool  # ddp_sync_ascent (SAM under DDP: average the ascent gradient)
    sync_bn: bool
    amp_dtype: torch.dtype | None  # autocast dtype (amp=auto resolved here); None: fp32
    device_name: str  # what results.json records as the device

    @property
    def main(self) -> bool:
        """Rank 0 (or a single process): the one that prints, logs and writes files."""
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    def describe(self, backend: str) -> dict[str, Any]:
        """The multi-process setting for results.json (m-sharpness bookkeeping)."""
        return {"world_size": self.world, "backend": backend,
                "per_rank_batch": self.per_rank_batch, "sync_ascent": self.sync_ascent,
                "sync_bn": self.sync_bn, "effective_m": self.effective_m}


def place(s: Settings) -> Placement:
    """The ``Placement`` of a run of ``s`` in the processes the launcher started (one
    outside torchrun), before they join; UserError for what cannot run there."""
    device = resolve_device(s.device)
    amp_dtype, name = autocast_dtype(s.amp, device), device_name(device)
    world = distributed.env_world_size()
    if s.amp == "fp16" and device.type != "cuda":
        raise UserError("amp=fp16 needs CUDA: use amp=bf16 or amp=off on cpu")
    if s.sync_bn and device.type != "cuda":
        raise UserError("sync_bn=true needs CUDA (SyncBatchNorm has no CPU kernel): use "
                        "sync_bn=false on cpu")
    _check_ranks(s, world)
    per_rank = s.batch_size // world
    m = distributed.local_m(s.m, s.batch_size)
    if s.is_sam:
        _check_variant(s, sharded=m is not None and m < per_rank, world=world)
    if (problem := accumulate_problem(per_rank, m, s.accumulate)) is not None:
        raise UserError(problem)
    return Placement(device, distributed.env_rank() if world > 1 else 0, world, per_rank, m,
                     distributed.effective_m(s.batch_size, s.m, world, sam=s.is_sam,
                                             sync_ascent=s.ddp_sync_ascent),
                     s.ddp_sync_ascent, s.sync_bn, amp_dtype, name)


def joined(placement: Placement) -> Placement:
    """``placement`` once the ranks have joined (``distributed.init``): this rank's device
    (cuda:LOCAL_RANK under torchrun) and rank."""
    device = distributed.init(placement.device)
    return dataclasses.replace(placement, device=device, rank=distributed.rank())


def _check_ranks(s: Settings, world: int) -> None:
    if world <= 1:
        return
    if s.batch_size % world:
        raise UserError(f"batch_size={s.batch_size} is not divisible by the {world} "
                        f"processes: use a multiple of {world} (the global batch is split "
                        "evenly over the ranks)")
    if s.m is None:
        return
    if s.is_sam and s.ddp_sync_ascent:
        if s.m == s.batch_size:  # plain SAM on the global batch, as m=null
            return
        raise UserError(f"m={s.m} with ddp_sync_ascent=true: the synchronised ascent is "
                        "plain SAM on the global batch; use m=null (or ddp_sync_ascent=false "
                        "for m-sharpness)")
    per_rank = s.batch_size // world
    if per_rank % s.m:
        raise UserError(f"m={s.m} does not divide the per-rank batch {per_rank} "
                        f"(batch_size={s.batch_size} over {world} processes): pick m from "
                        f"its divisors, or m=null for one shard per rank")


def _check_variant(s: Settings, *, sharded: bool, world: int) -> None:
    """A SAM variant that cannot run with m-sharpness shards in this process (``sharded``)
    or over ``world`` processes."""
    o = s.optim
    ablation = o.ascent_steps > 1 or o.second_order or o.ascent == "random"
    if (ablation or o.variant == "gsam") and sharded and s.m_impl == "vmap":
        raise UserError(f"{variant_label(o.spec)} runs m-sharpness shards in a loop: use "
                        "m_impl=loop or auto")
    if o.second_order and world > 1 and s.ddp_sync_ascent:
        raise UserError("optim.second_order with ddp_sync_ascent=true: eps then depends on "
                        "every rank's gradient; use ddp_sync_ascent=false")
    if o.variant == "looksam" and (sharded or world > 1):
        raise UserError("optim=looksam keeps g_v per process: it runs without m-sharpness "
                        "shards and on one process (m=null, no torchrun)")
