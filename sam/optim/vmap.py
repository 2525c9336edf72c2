"""m-sharpness with all k shards at once: torch.func.vmap over a leading shard axis.

The same maths as the shard loop (shards.py), per-shard g_i, eps_i and
grad L_i(w + eps_i), in two batched passes instead of 2k small ones, at the cost of k
parameter copies in memory; where vmap cannot batch a layer, "auto" falls back to the loop.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from .batchnorm import _batch_norms, fp32_batchnorm_inputs, frozen_bn_stats
from .passes import AscentContext
from .perturbation import _shard_perturbed
from .rng import RngReplay
from .sam import SAM
from .shards import _sam_shards


def _vmap_wanted(impl: str, optimizer: SAM, device: torch.device, shards: int,
                 scaler: torch.amp.GradScaler | None) -> bool:
    """Whether the k shards run batched with vmap (see sam_step's ``shard_impl``)."""
    if impl not in ("auto", "loop", "vmap"):
        raise ValueError(f"shard_impl must be auto, loop or vmap, got {impl!r}")
    if optimizer.shards != "vmap":  # a variant's own passes: the loop runs them
        if impl == "vmap":
            raise ValueError(f"{type(optimizer).__name__} with these options runs its "
                             "shards in a loop: use shard_impl='loop' or 'auto'")
        return False
    if impl != "auto":
        return impl == "vmap"
    numel = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    many = shards >= (4 if device.type == "cuda" else 64)
    return (many and shards * numel <= 2**28 and scaler is None
            and not getattr(optimizer, "vmap_failed", False))


def _sam_shards_vmap_or_loop(model, optimizer, loss_fn, x, y, m, amp_dtype, scaler,
                             impl: str, ascent_context: AscentContext = None
                             ) -> tuple[Tensor, Tensor]:
    """vmap; in "auto" mode a layer that vmap cannot batch falls back to the loop (the
    vmap path changes no state before it succeeds; the RNG is replayed)."""
    if scaler is not None:
        raise ValueError("shard_impl='vmap' does not support a GradScaler; use 'loop'")
    net = model.module if isinstance(model, DistributedDataParallel) else model
    net = getattr(net, "_orig_mod", net)  # torch.compile'd: vmap the eager module
    rng = RngReplay(x.device)
    try:
        return _sam_shards_vmap(net, optimizer, loss_fn, x, y, m, amp_dtype, ascent_context)
    except RuntimeError as err:
        if impl == "vmap":
            raise
        warnings.warn(f"m-sharpness: vmap failed ({err}); using the per-shard loop",
                      stacklevel=3)
        optimizer.vmap_failed = True
        rng.replay()
        return _sam_shards(model, optimizer, loss_fn, x, y, m, amp_dtype, scaler,
                           ascent_context)


def _sam_shards_vmap(model, optimizer, loss_fn, x, y, m, amp_dtype,
                     ascent_context: AscentContext = None) -> tuple[Tensor, Tensor]:
    """m-sharpness with all k shards at once (torch.func.vmap over the shard axis): the
    same math as the loop, per-shard g_i, eps_i and grad L_i(w + eps_i), in two batched
    passes instead of 2k small ones. Each shard updates its own copy of the BatchNorm
    buffers in the clean pass; the model keeps their mean, as in the loop."""
    from torch.func import functional_call, grad, vmap

    k = x.shape[0] // m
    # contiguous (NCHW) layouts: vmap has no fast batching rule for some channels_last ops
    # targets: labels (B,) or soft targets (B, C) (a Mixup batch)
    xs, ys = x.contiguous().reshape(k, m, *x.shape[1:]), y.reshape(k, m, *y.shape[1:])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach().contiguous() for n, p in named}
    tracked = {id(b) for bn in _batch_norms(model) if bn.track_running_stats
               for b in bn.buffers()}
    buffers = dict(model.named_buffers())
    shard_buffers = {n: b.expand(k, *b.shape).clone() if id(b) in tracked else b
                     for n, b in buffers.items()}
    buffer_dims = {n: 0 if id(b) in tracked else None for n, b in buffers.items()}

    def shard_loss(p, b, xi, yi):
        with torch.autocast(xi.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = functional_call(model, (p, b), (xi,))
            loss = loss_fn(out, yi)
        return loss, (loss.detach(), out.detach())

    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    groups = {n: group_of[id(p)] for n, p in named}
    rng = RngReplay(x.device)
    with fp32_batchnorm_inputs(model) if amp_dtype is not None else nullcontext():
        clean = vmap(grad(shard_loss, has_aux=True), in_dims=(None, buffer_dims, 0, 0),
                     randomness="different")
        with ascent_context() if ascent_context is not None else nullcontext():
            g, (losses, outs) = clean(params, shard_buffers, xs, ys)
        perturbed = _shard_perturbed(groups, params, g, k)
        rng.replay()
        with frozen_bn_stats(model):
            descent = vmap(grad(shard_loss, has_aux=True), in_dims=(0, None, 0, 0),
                           randomness="different")
            h, _ = descent(perturbed, buffers, xs, ys)
    with torch.no_grad():
        for n, b in buffers.items():
            if id(b) in tracked:
                b.copy_(shard_buffers[n].double().mean(0) if b.is_floating_point()
                        else shard_buffers[n][0])
        for n, p in named:
            l2 = groups[n]["l2"]
            p.grad = h[n].mean(0) + l2 * perturbed[n].mean(0) if l2 else h[n].mean(0)
    return losses.mean(), outs.reshape(-1, *outs.shape[2:])
