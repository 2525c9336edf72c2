"""SAM under DistributedDataParallel: ``sam_step`` runs every pass under ``no_sync()``
and averages, itself and once per step, the descent gradient together with the
BatchNorm running statistics (and, with ``sync_ascent``, the clean gradient before the
ascent). Helpers to tell a real process group and to average across its ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .batchnorm import _batch_norms


def _in_process_group(model: nn.Module) -> bool:
    return (isinstance(model, DistributedDataParallel) and dist.is_available()
            and dist.is_initialized() and dist.get_world_size(model.process_group) > 1)


@torch.no_grad()
def _average_across_ranks(ddp: DistributedDataParallel, optimizer: torch.optim.Optimizer,
                          with_bn: bool) -> None:
    """p.grad (and BN running mean/var when ``with_bn``) <- the mean over the ranks.

    One flat all-reduce per (dtype, device). A parameter without a gradient takes part
    with zeros (and keeps them), so every rank applies the same update."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    tensors = [p.grad for p in params]
    if with_bn:
        tensors += [b for bn in _batch_norms(ddp)
                    if bn.track_running_stats and not isinstance(bn, nn.SyncBatchNorm)
                    for b in (bn.running_mean, bn.running_var)
                    if b is not None and b.is_floating_point()]
    buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.dtype, t.device), []).append(t)
    world = dist.get_world_size(ddp.process_group)
    for group in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, group=ddp.process_group)
        flat.div_(world)
        parts = flat.split([t.numel() for t in group])
        torch._foreach_copy_(group, [f.view_as(t) for f, t in zip(parts, group, strict=True)])
