"""One training step on a batch, SGD or SAM, plain or m-sharpness, on one process or
under DistributedDataParallel: ``sam_step``.

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss = sam_step(model, opt, F.cross_entropy, x, y)          # one call per batch

Multi-GPU: pass the DistributedDataParallel wrapper to ``sam_step``; it runs every pass
under ``no_sync()`` and averages the descent gradient across ranks itself, once
(per-rank ascent by default, ``sync_ascent=True`` for the global-batch ascent).
With a GradScaler (fp16) the base step unscales, clips and steps the base optimizer
after the restore (the recipe in sam.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from .accumulate import accumulated_plain, accumulated_sam
from .batchnorm import ghost_batchnorm
from .ddp import _average_across_ranks, _in_process_group
from .passes import AscentContext, _forward_backward, _sam_shard
from .sam import SAM
from .shards import _sam_shards, _shards
from .vmap import _sam_shards_vmap_or_loop, _vmap_wanted


def sam_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    m: int | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    return_outputs: bool = False,
    sync_ascent: bool = False,
    shard_impl: str = "auto",
    ascent_context: AscentContext = None,
    accumulate: int = 1,
) -> Tensor | tuple[Tensor, Tensor]:
    """One training step on a batch; returns the clean-pass loss (a 0-d tensor, no sync).

    With a plain optimizer: forward, backward, step; with m < B each of the k = B/m
    shards has its own BatchNorm statistics ("ghost" BatchNorm: k accelerators of m
    examples without synchronised BatchNorm), gradients and BN updates averaged: shard
    by shard (``shard_impl="loop"``, and "auto" on CPU) or in one pass (``ghost_batchnorm``:
    "vmap", and "auto" elsewhere).
    With ``SAM``: the batch of B
    examples is cut into k = B/m shards (m=None means m=B, ordinary SAM); shard i
    takes its own eps_i from its own gradient g_i and its own gradient at w + eps_i;
    the descent gradient is (1/k) sum_i grad L_i(w + eps_i). The perturbed passes
    replay the clean pass's RNG state (same dropout/shake draws) and touch no
    BatchNorm buffer; the BatchNorm running statistics get ONE update per step from
    the mean of the shards' batch statistics (for k=1: exactly one clean forward),
    as the official code averages per-replica statistics.
    ``return_outputs`` also returns the clean-pass model outputs (for train error).

    ``shard_impl`` picks how k > 1 shards run: "loop" (2k small passes), "vmap" (all
    shards in two batched passes with torch.func.vmap; the same math, per-shard
    parameter copies in memory) or "auto": vmap when there are many shards (k >= 64 on
    CPU, k >= 4 on CUDA where small passes are launch-bound), the k parameter copies
    fit in 2^28 numbers and no GradScaler is used; the loop otherwise, and also when a
    layer cannot be vmapped (a warning says so once).

    Under ``DistributedDataParallel`` (``model`` is the DDP wrapper, in a process group
    of W ranks) ``inputs`` is this rank's part of the global batch. All passes run
    under ``model.no_sync()`` (forward included), so DDP reduces nothing by itself;
    then ONE all-reduce per dtype averages the descent gradients together with the
    BatchNorm running statistics (SyncBatchNorm layers excepted: they already agree).
    By default each rank perturbs with its own gradient: m-sharpness with m = the
    per-rank batch, or with shards of ``m`` inside each rank, exactly a single-process
    ``sam_step(..., m)`` on the concatenated global batch. ``sync_ascent=True``
    averages the clean-pass gradient over the ranks before eps is computed (one more
    all-reduce; one shard per rank, ``m`` None): plain SAM on the global batch (with
    BatchNorm, each rank still normalises with its own batch statistics). A plain base
    optimizer gets the same treatment: gradients and BN statistics averaged once.
    ``sync_ascent`` has no effect outside DDP.

    ``ascent_context``: a callable returning a context manager that SAM's clean (ascent)
    pass runs inside, e.g. the official code's ``true_gradient`` for Shake-Shake
    (``sam.models.true_gradient``); the perturbed pass and plain steps run without it.

    ``accumulate=k`` runs the batch as k micro-batches of B/k for memory (accumulate.py):
    SAM accumulates the clean gradient over all k before ONE eps (SAM on the whole batch),
    then the gradient at w + eps; each micro-batch has its own BatchNorm statistics.
    """
    optimizer.zero_grad(set_to_none=True)
    batch = inputs.shape[0]
    m = batch if m is None else m
    if m <= 0 or batch % m:
        raise ValueError(f"m={m} must divide the batch size {batch}")
    shards = batch // m
    sam = optimizer if isinstance(optimizer, SAM) else None
    ddp = model if _in_process_group(model) else None
    with ddp.no_sync() if ddp is not None else nullcontext():
        if sam is None:
            if accumulate != 1:
                loss, out = accumulated_plain(model, optimizer, loss_fn, inputs, targets, m,
                                              accumulate, amp_dtype, scaler)
            elif shards == 1:
                loss, out = _forward_backward(model, loss_fn, inputs, targets, amp_dtype,
                                              scaler)
            elif shard_impl == "loop" or (shard_impl == "auto" and inputs.device.type == "cpu"):
                # shards: own BatchNorm statistics, one accelerator each (on CPU the small
                # passes are faster than the one pass's extra copies)
                loss, out = _shards(model, optimizer, inputs, targets, m, lambda xs, ys:
                                    _forward_backward(model, loss_fn, xs, ys, amp_dtype, scaler),
                                    keep_unused_none=True)
            else:  # the same in one pass: BatchNorm computes per-shard statistics
                with ghost_batchnorm(model, shards):
                    loss, out = _forward_backward(model, loss_fn, inputs, targets, amp_dtype,
                                                  scaler)
        else:
            if scaler is not None and any(g["l2"] for g in sam.param_groups):
                raise ValueError("GradScaler with wd_mode='loss' is not supported; use bf16 "
                                 "or 'base'")
            if sam.shards == "none" and (shards > 1 or ddp is not None):
                raise ValueError(f"{type(sam).__name__} keeps per-process state: it runs "
                                 "without m-sharpness shards (m=None) and DDP ranks")
            ascent_sync = ddp if sync_ascent else None
            if ascent_sync is not None and shards > 1:
                raise ValueError(f"sync_ascent averages the ascent over the ranks: it needs "
                                 f"one shard per rank (m=None), got m={m} for a local batch "
                                 f"of {batch}")
            if accumulate != 1:
                loss, out = accumulated_sam(model, sam, loss_fn, inputs, targets, m,
                                            accumulate, amp_dtype, scaler, ascent_sync,
                                            ascent_context)
            elif shards == 1:
                loss, out = _sam_shard(model, sam, loss_fn, inputs, targets, amp_dtype,
                                       scaler, ascent_sync, ascent_context)
            elif _vmap_wanted(shard_impl, sam, inputs.device, shards, scaler):
                loss, out = _sam_shards_vmap_or_loop(model, sam, loss_fn, inputs, targets, m,
                                                     amp_dtype, scaler, shard_impl,
                                                     ascent_context)
            else:
                loss, out = _sam_shards(model, sam, loss_fn, inputs, targets, m, amp_dtype,
                                        scaler, ascent_context)
        if ddp is not None:
            _average_across_ranks(ddp, optimizer, with_bn=True)
    _base_step(optimizer, scaler, sam)
    return (loss, out) if return_outputs else loss


def _base_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    sam: SAM | None,
) -> None:
    """Unscale (fp16), clip (max_grad_norm) and apply the descent gradient; a plain
    ``Descent`` optimizer adds its L2 gradient and clips inside its own ``step``."""
    base = sam.base_optimizer if sam is not None else optimizer
    if scaler is not None:
        scaler.unscale_(base)
    if sam is not None:
        sam.clip_grad_norm_()
    if scaler is not None:
        scaler.step(base)
        scaler.update()
    else:
        base.step()
    if sam is not None:
        sam._opt_called = True
