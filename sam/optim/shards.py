"""m-sharpness, shard by shard: a batch of B examples as k = B/m shards of m, each as
one accelerator of a data-parallel group would see it (own BatchNorm statistics, own
gradient; for SAM its own eps_i from its own g_i), the results averaged:

    descent gradient = (1/k) sum_i grad L_i(w + eps_i),   BN buffers <- mean_i(update_i).

vmap.py runs the same maths in two batched passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batchnorm import MeanBNUpdate
from .passes import AscentContext, _sam_shard


def _sam_shards(model, optimizer, loss_fn, x, y, m, amp_dtype, scaler,
                ascent_context: AscentContext = None) -> tuple[Tensor, Tensor]:
    """m-sharpness: per-shard SAM gradients averaged; BN stats averaged over shards."""
    return _shards(model, optimizer, x, y, m, lambda xs, ys: _sam_shard(
        model, optimizer, loss_fn, xs, ys, amp_dtype, scaler, ascent_context=ascent_context),
        keep_unused_none=False)


def _shards(model, optimizer, x, y, m, shard_step,
            keep_unused_none: bool) -> tuple[Tensor, Tensor]:
    """The batch in shards of m, one ``shard_step(xs, ys) -> (loss, out)`` each (which
    leaves the shard's gradient in p.grad), every shard starting from the same BatchNorm
    buffers: p.grad <- the mean of the shards' gradients, the BN buffers <- the mean of
    the shards' updates (k accelerators of m examples, their results averaged).

    A parameter no shard reaches keeps grad None with ``keep_unused_none`` (SGD: as the
    one-pass path and an unsharded step), else gets zeros (SAM: as its vmap path, which
    cannot tell an unused parameter from a zero gradient)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    # every shard's clean pass starts from the same BN buffers (num_batches_tracked
    # included), so each ends with one update from its own statistics; we keep the mean
    bn = MeanBNUpdate(model)
    grad_sum = [torch.zeros_like(p) for p in params]
    used = [not keep_unused_none] * len(params)
    losses, outs = [], []
    for xs, ys in zip(x.split(m), y.split(m), strict=True):
        bn.start()
        optimizer.zero_grad(set_to_none=True)
        loss, out = shard_step(xs, ys)
        bn.add()
        losses.append(loss)
        outs.append(out)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        used = [u or p.grad is not None for u, p in zip(used, params, strict=True)]
        torch._foreach_add_(grad_sum, grads)
    bn.finish()
    with torch.no_grad():
        for p, g, u in zip(params, torch._foreach_div(grad_sum, len(losses)), used,
                           strict=True):
            p.grad = g if u else None
    return torch.stack(losses).mean(), torch.cat(outs)
