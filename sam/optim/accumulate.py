"""Gradient accumulation for SAM and plain steps: a batch of B examples in k micro-batches
of b = B/k, for memory (``sam_step(..., accumulate=k)``): only one micro-batch's
activations are alive at a time.

SAM on the big batch, with L_j the mean loss of micro-batch j (L_S = (1/k) sum_j L_j):

    g   = (1/k) sum_j grad L_j(w)             every micro-batch's clean pass, BEFORE eps
    eps = rho g / ||g||                        ONE eps for the whole batch (SAM.first_step)
    g'  = (1/k) sum_j grad L_j(w + eps)        the perturbed passes, accumulated the same way
    w   <- restored exactly, base step with g'

Without BatchNorm this is the full-batch SAM step up to rounding. m-sharpness is a
different thing: each shard of m takes its OWN eps_i from its own gradient. The two
combine when one of m and b divides the other: shards of m <= b run one by one (each at
most a micro-batch: the m-sharpness loop); a shard of m > b is accumulated over its m/b
micro-batches (one eps per shard).

BatchNorm: each micro-batch is normalised with its own statistics (as a data-parallel
group of k devices of b examples would be); its clean pass starts from the step's
running statistics, and the step ends with their mean over the micro-batches,
    r <- (1 - momentum) r + momentum * mean_j(stat_j),   num_batches_tracked + 1,
one update per step, as for m-sharpness shards and DDP ranks (shards.py). The perturbed
passes touch no BatchNorm buffer and replay each micro-batch's clean-pass random draws
(dropout, shake). A plain optimizer (SGD) gets the same mean gradient and one step
(pieces of min(m, b): m keeps its meaning, own BatchNorm statistics per shard).

Memory: the gradients add up in p.grad (each micro-batch loss scaled by 1/k), so no
buffer beyond plain SAM's; m-sharpness shards keep their running sum as without
accumulation. The clean-pass outputs of all micro-batches are kept (B x classes).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .args import check_count
from .batchnorm import MeanBNUpdate, frozen_bn_stats
from .ddp import _average_across_ranks
from .passes import AscentContext, _forward_backward
from .rng import RngReplay
from .shards import _sam_shards, _shards


def accumulate_problem(batch: int, m: int | None, accumulate: Any) -> str | None:
    """Why ``accumulate`` cannot split a (per-rank) batch of ``batch`` with shard size
    ``m`` (None: the whole batch), as one "problem: fix" line; None when it can."""
    try:
        check_count("accumulate", accumulate)
    except ValueError as err:
        return f"{err} (1: no micro-batches)"
    if batch % accumulate:
        return (f"accumulate={accumulate} does not divide the (per-rank) batch {batch}: pick "
                "accumulate from its divisors (micro-batches of equal size)")
    micro = batch // accumulate
    if m is not None and m < batch and m % micro and micro % m:
        return (f"accumulate={accumulate} with m={m}: the micro-batch of {micro} and the shard "
                f"of {m} must divide one another; pick m from the divisors or multiples of "
                f"{micro}")
    return None


def accumulated_plain(model: nn.Module, optimizer, loss_fn: Callable, x: Tensor, y: Tensor,
                      m: int, accumulate: int, amp_dtype, scaler) -> tuple[Tensor, Tensor]:
    """A plain optimizer's gradient over pieces of min(m, B/k) examples, accumulated in
    p.grad: (1/n) sum_j grad L_j, the BN buffers the mean update. Returns the batch's
    mean loss and its outputs in order."""
    _check(x.shape[0], m, accumulate)
    piece = min(m, x.shape[0] // accumulate)
    scaled = _scaled(loss_fn, x.shape[0] // piece)
    return _micro_batches(model, x, y, piece, lambda xs, ys: _forward_backward(
        model, scaled, xs, ys, amp_dtype, scaler))


def accumulated_sam(model: nn.Module, sam, loss_fn: Callable, x: Tensor, y: Tensor, m: int,
                    accumulate: int, amp_dtype, scaler,
                    ascent_sync: DistributedDataParallel | None = None,
                    ascent_context: AscentContext = None) -> tuple[Tensor, Tensor]:
    """SAM's passes over micro-batches (module docstring), restored: p.grad holds the
    descent gradient. ``m`` < B: shards of m, each with its own eps (m-sharpness)."""
    batch = x.shape[0]
    _check(batch, m, accumulate)
    if sam.shard_passes is not None:
        raise ValueError(f"accumulate={accumulate}: {type(sam).__name__} with these options "
                         "(LookSAM, ascent_steps, second_order, ascent=random) takes passes "
                         "of its own that are not accumulated; use accumulate=1")
    micro = batch // accumulate
    if m == batch:
        return _accumulated_passes(model, sam, loss_fn, x, y, micro, amp_dtype, scaler,
                                   ascent_sync, ascent_context)
    if m <= micro:  # every shard fits a micro-batch: the m-sharpness loop, shard by shard
        return _sam_shards(model, sam, loss_fn, x, y, m, amp_dtype, scaler, ascent_context)
    return _shards(model, sam, x, y, m, lambda xs, ys: _accumulated_passes(
        model, sam, loss_fn, xs, ys, micro, amp_dtype, scaler, None, ascent_context),
        keep_unused_none=False)


def _check(batch: int, m: int, accumulate: int) -> None:
    problem = accumulate_problem(batch, m, accumulate)
    if problem is not None:
        raise ValueError(problem)


def _scaled(loss_fn: Callable, n: int) -> Callable:
    """loss / n: n backward passes of it add up to the gradient of the mean."""
    return lambda out, target: loss_fn(out, target) / n


def _micro_batches(model: nn.Module, x: Tensor, y: Tensor, piece: int,
                   step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                   ) -> tuple[Tensor, Tensor]:
    """``step(xs, ys) -> (loss_j / n, out_j)`` on the n consecutive pieces of ``piece``
    examples (each leaves its gradient added to p.grad); each piece's forward starts from
    the same BatchNorm buffers, which end with the mean of the pieces' updates. Returns
    (sum_j loss_j / n, the outputs in order)."""
    bn = MeanBNUpdate(model)
    losses, outs = [], []
    for xs, ys in zip(x.split(piece), y.split(piece), strict=True):
        bn.start()
        loss, out = step(xs, ys)
        bn.add()
        losses.append(loss)
        outs.append(out)
    bn.finish()
    return torch.stack(losses).sum(), torch.cat(outs)


def _accumulated_passes(model, sam, loss_fn, x, y, micro, amp_dtype, scaler,
                        ascent_sync: DistributedDataParallel | None,
                        ascent_context: AscentContext) -> tuple[Tensor, Tensor]:
    """Clean passes (their gradients added up in p.grad, BN updates averaged), ONE
    ascent, perturbed passes (the same random draws, no BN update), exact restore."""
    scaled = _scaled(loss_fn, x.shape[0] // micro)
    draws: list[RngReplay] = []

    def clean(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        draws.append(RngReplay(xs.device))
        with ascent_context() if ascent_context is not None else nullcontext():
            return _forward_backward(model, scaled, xs, ys, amp_dtype, scaler)

    loss, out = _micro_batches(model, x, y, micro, clean)
    if ascent_sync is not None:
        _average_across_ranks(ascent_sync, sam, with_bn=False)
    sam.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        for xs, ys, draw in zip(x.split(micro), y.split(micro), draws, strict=True):
            draw.replay()
            _forward_backward(model, scaled, xs, ys, amp_dtype, scaler)
    sam.unperturb()
    return loss, out
