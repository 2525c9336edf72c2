"""What the ranks exchange: barriers, Python objects, and sums of metrics (no-ops in one
process). SAM's gradient averaging under DDP lives in ``sam.optim.sam_step``."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from sam.distributed.group import is_distributed


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
