"""BatchNorm under SAM and m-sharpness: which pass may update the running statistics,
and how one pass normalises k shards with their own statistics.

* ``frozen_bn_stats``: the perturbed pass at w + eps still normalises with batch
  statistics but changes no buffer, so each step updates the running statistics once.
* ``ghost_batchnorm``: a batch of k shards of m examples normalised shard by shard, as
  k accelerators without synchronised BatchNorm would (m-sharpness, SGD with shards).
* ``fp32_batchnorm_inputs``: float32 BatchNorm inputs, for vmap under autocast.
* ``MeanBNUpdate``: pieces of a batch run one by one (shards, micro-batches), each from
  the same running statistics, which end with the mean of the pieces' updates.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class MeanBNUpdate:
    """The running statistics of a batch run in pieces, as k accelerators would update
    them: ``start()`` before each piece's forward puts back the buffers the step began
    with, ``add()`` after it counts the piece's update, ``finish()`` leaves their mean,
        r <- mean_j(r_j)   (num_batches_tracked included; summed in float64)."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for bn in _batch_norms(model) if bn.track_running_stats
                        for b in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
                        if b is not None]
        self.initial = [b.clone() for b in self.buffers]
        self.total = [torch.zeros_like(b, dtype=torch.float64) for b in self.buffers]
        self.pieces = 0

    def start(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.initial)

    def add(self) -> None:
        for total, b in zip(self.total, self.buffers, strict=True):
            total.add_(b)
        self.pieces += 1

    @torch.no_grad()
    def finish(self) -> None:
        for b, total in zip(self.buffers, self.total, strict=True):
            b.copy_(total / self.pieces)


@contextmanager
def ghost_batchnorm(model: nn.Module, shards: int) -> Iterator[None]:
    """Within the block every BatchNorm layer (SyncBatchNorm excepted) in train mode
    treats its batch as ``shards`` consecutive shards, as that many accelerators would:
    shard i is normalised with its own statistics (mean_i, biased var_i), and the running
    statistics get the mean of the shards' updates,
        r <- (1 - momentum) r + momentum * mean_i(stat_i)   (var_i unbiased here),
    num_batches_tracked +1. One pass: the shards sit side by side as k x C channels."""
    bns = [bn for bn in _batch_norms(model) if not isinstance(bn, nn.SyncBatchNorm)]
    for bn in bns:
        bn.forward = types.MethodType(_ghost_forward, bn)
        bn.ghost_shards = shards
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward, bn.ghost_shards


def _ghost_forward(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    k = bn.ghost_shards
    if not bn.training or k == 1 or bn.momentum is None:
        return type(bn).forward(bn, x)  # (cumulative averaging has no per-shard form here)
    n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
    m = n // k
    side_by_side = x.reshape(k, m, c, *rest).transpose(0, 1).reshape(m, k * c, *rest)
    track = bn.track_running_stats
    running = [b.repeat(k) if track else None for b in (bn.running_mean, bn.running_var)]
    affine = [t.repeat(k) if t is not None else None for t in (bn.weight, bn.bias)]
    y = F.batch_norm(side_by_side, *running, *affine, training=True, momentum=bn.momentum,
                     eps=bn.eps)
    if track:
        with torch.no_grad():
            for buffer, updated in zip((bn.running_mean, bn.running_var), running, strict=True):
                buffer.copy_(updated.view(k, c).mean(0))
            bn.num_batches_tracked.add_(1)
    out = y.reshape(m, k, c, *rest).transpose(0, 1).reshape(x.shape)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Within the block BatchNorm layers still normalise with batch statistics (in
    train mode) but no buffer changes: running mean/var and num_batches_tracked."""
    bns = [m for m in _batch_norms(model) if m.track_running_stats]
    for bn in bns:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn in bns:
            bn.track_running_stats = True


@contextmanager
def fp32_batchnorm_inputs(model: nn.Module) -> Iterator[None]:
    """Within the block every BatchNorm layer casts its input to float32 (under autocast
    it normalises in float32 anyway; only its output stays float32 too). vmap's BatchNorm
    rule with per-shard running statistics rejects a bf16/fp16 input beside float32
    statistics, so the batched m-sharpness passes need this under autocast."""
    handles = [bn.register_forward_pre_hook(lambda _, args: (args[0].float(), *args[1:]))
               for bn in _batch_norms(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
