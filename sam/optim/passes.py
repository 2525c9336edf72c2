"""The passes of one step: a forward-backward (under autocast, through a GradScaler),
and SAM's two passes on one batch or shard: clean pass at w, ascent to w + eps,
perturbed pass with the same random draws and frozen BatchNorm buffers, exact restore.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .batchnorm import frozen_bn_stats
from .ddp import _average_across_ranks
from .rng import RngReplay


def _forward_backward(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
) -> tuple[Tensor, Tensor]:
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(x)
        loss = loss_fn(out, y)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss.detach(), out.detach()


AscentContext = Callable[[], AbstractContextManager] | None


def _sam_shard(model, optimizer, loss_fn, x, y, amp_dtype, scaler,
               ascent_sync: DistributedDataParallel | None = None,
               ascent_context: AscentContext = None) -> tuple[Tensor, Tensor]:
    """SAM's passes on one batch or shard (``_sam_passes``), or those of a variant or
    ablation that has its own (``optimizer.shard_passes``, same arguments)."""
    passes = optimizer.shard_passes or _sam_passes
    return passes(model, optimizer, loss_fn, x, y, amp_dtype, scaler, ascent_sync,
                  ascent_context)


def _sam_passes(model, optimizer, loss_fn, x, y, amp_dtype, scaler,
                ascent_sync: DistributedDataParallel | None = None,
                ascent_context: AscentContext = None) -> tuple[Tensor, Tensor]:
    """Clean pass, ascent, perturbed pass, restore: p.grad holds grad L(w + eps).
    With ``ascent_sync`` (a DDP model) the clean gradient is first averaged over ranks;
    the clean pass runs inside ``ascent_context()`` when given."""
    rng = RngReplay(x.device)
    with ascent_context() if ascent_context is not None else nullcontext():
        loss, out = _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)
    if ascent_sync is not None:
        _average_across_ranks(ascent_sync, optimizer, with_bn=False)
    optimizer.first_step(zero_grad=True)
    rng.replay()
    with frozen_bn_stats(model):
        _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)
    optimizer.unperturb()
    return loss, out
