"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) for any torch optimizer.

Pure torch, imports nothing else of the project. Two ways to use it:

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss = sam_step(model, opt, F.cross_entropy, x, y)          # one call per batch

or the closure form ``opt.step(closure, model=model)``, or the explicit two-step form

    rng = RngReplay(x.device)
    loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)   # w -> w + eps
    rng.replay()                                      # the same dropout/shake draws
    with frozen_bn_stats(model):                      # BatchNorm: only the clean pass updates
        loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)                   # restore w, base step

Multi-GPU: pass the DistributedDataParallel wrapper to ``sam_step``; it runs every pass
under ``no_sync()`` and averages the descent gradient across ranks itself, once
(per-rank ascent by default, ``sync_ascent=True`` for the global-batch ascent).

Weight decay (lambda) has two conventions, chosen by ``wd_mode``:

* ``"base"`` (default): the base optimizer applies ``weight_decay`` at w, after the
  restore; the ascent direction is the gradient of the data loss only. This is the
  paper's objective (eq. 1: min_w L^SAM(w) + lambda ||w||^2, the sharpness term
  involves L_S alone; torch's ``weight_decay=lambda`` adds lambda w, the gradient of
  lambda/2 ||w||^2, the same convention as "loss") and what the common PyTorch
  wrappers do.
* ``"loss"``: the L2 term lambda/2 ||w||^2 behaves as if it were part of the loss,
  as in the official JAX implementation: the ascent gradient is g + lambda w and the
  descent gradient is grad L(w + eps) + lambda (w + eps); the base optimizer then
  runs with weight_decay = 0. A parameter group's own ``weight_decay`` is its lambda
  (e.g. 0 for a "no decay on BatchNorm" group).

fp16 with ``torch.amp.GradScaler``: eps = rho g / ||g|| is invariant to the loss
scale, so ``first_step`` may run on scaled gradients. Unscale (and clip) only the
descent gradient, on ``opt.base_optimizer``, after ``unperturb()``:
``opt.unperturb(); scaler.unscale_(opt.base_optimizer); scaler.step(opt.base_optimizer);
scaler.update()``. An inf/NaN in either pass makes the descent gradient non-finite,
so the scaler skips the base step while the weights are already restored exactly.
``sam_step(..., scaler=scaler)`` does all of this.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

_GUARD = 1e-12  # keeps rho / ||g|| finite for a zero gradient (eps is then exactly 0)


class SAM(torch.optim.Optimizer):
    """SAM wrapper around a base optimizer class.

    Ascent: eps = rho g / ||g||_2 (p=2, norm over ALL parameters of all groups) or
    eps = rho sign(g) (p=inf). ASAM (adaptive=True, Kwon et al. 2021) uses
    T_w = |w| + eta: eps = rho T_w^2 g / ||T_w g||_2 (p=2), rho T_w sign(g) (p=inf),
    on every parameter (Kwon et al.'s code leaves biases unscaled: give them their own
    group with adaptive=False to match it).
    Descent: the gradient taken at w + eps drives the base optimizer from the
    restored (bit-identical) w. The Hessian term of the full derivative is dropped.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        p: float = 2,
        adaptive: bool = False,
        eta: float = 0.01,
        wd_mode: str = "base",
        max_grad_norm: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if p not in (2, float("inf")):
            raise ValueError(f"p must be 2 or inf, got {p}")
        if wd_mode not in ("base", "loss"):
            raise ValueError(f"wd_mode must be 'base' or 'loss', got {wd_mode!r}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        l2 = 0.0
        if wd_mode == "loss":
            l2 = float(base_kwargs.pop("weight_decay", 0.0))
        self.wd_mode = wd_mode
        defaults = dict(rho=rho, p=float(p), adaptive=adaptive, eta=eta, l2=l2, **base_kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # shared: schedulers see one LR
        self.defaults.update(self.base_optimizer.defaults)
        self.max_grad_norm = max_grad_norm
        self.perturbed = False
        self._moved: list[Tensor] = []  # what first_step perturbed: exactly what is restored

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; in wd_mode="loss" its ``weight_decay`` becomes its L2 lambda."""
        if self.wd_mode == "loss" and "weight_decay" in param_group:
            param_group = dict(param_group)
            param_group["l2"] = float(param_group.pop("weight_decay"))
        super().add_param_group(param_group)

    def _with_grad(self, group: dict) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def _grad_norm(self) -> Tensor:
        """||v||_2 over all groups, v = T_w (g + l2 w), T_w = |w| + eta (ASAM) or 1."""
        norms = []
        for group in self.param_groups:
            params = self._with_grad(group)
            if not params:
                continue
            grads = self._ascent_grads(group, params)
            if group["adaptive"]:
                grads = torch._foreach_mul(grads, self._scales(group, params))
            norms.extend(torch._foreach_norm(grads, 2))
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2)

    @staticmethod
    def _ascent_grads(group: dict, params: list[Tensor]) -> list[Tensor]:
        grads = [p.grad for p in params]
        if group["l2"]:
            grads = torch._foreach_add(grads, params, alpha=group["l2"])
        return grads

    @staticmethod
    def _scales(group: dict, params: list[Tensor]) -> list[Tensor]:
        return torch._foreach_add(torch._foreach_abs(params), group["eta"])

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save w and move to w + eps (formula in the class docstring)."""
        if self.perturbed:
            raise RuntimeError("first_step called twice without unperturb/second_step")
        norm = None
        if any(g["p"] == 2 for g in self.param_groups):
            norm = self._grad_norm()
        self._moved = []
        try:
            self._ascend(norm)
        except BaseException:  # leave no parameter half-way: back to w, nothing recorded
            self._restore_moved()
            raise
        self.perturbed = True
        if zero_grad:
            self.zero_grad()

    def _ascend(self, norm: Tensor | None) -> None:
        """w <- w + eps for every parameter with a gradient, saving w first."""
        for group in self.param_groups:
            params = self._with_grad(group)
            if not params:
                continue
            saved = [self._saved(p) for p in params]
            torch._foreach_copy_(saved, params)
            self._moved.extend(params)
            grads = self._ascent_grads(group, params)
            if group["p"] == 2:
                scale = group["rho"] / (norm.to(params[0].device) + _GUARD)
                eps = torch._foreach_mul(grads, scale)
                if group["adaptive"]:
                    scales = self._scales(group, params)
                    torch._foreach_mul_(eps, torch._foreach_mul(scales, scales))
            else:
                eps = torch._foreach_sign(grads)
                torch._foreach_mul_(eps, group["rho"])
                # + 0 g: an inf in g makes eps NaN (sign(inf) alone is finite), so, as
                # for p=2, an overflow in the clean pass reaches the descent gradient
                # and a GradScaler skips the step and lowers its scale.
                torch._foreach_add_(eps, torch._foreach_mul(grads, 0.0))
                if group["adaptive"]:
                    torch._foreach_mul_(eps, self._scales(group, params))
            torch._foreach_add_(params, eps)

    @torch.no_grad()
    def _restore_moved(self) -> None:
        if self._moved:
            torch._foreach_copy_(self._moved, [self.state[p]["old_p"] for p in self._moved])
        self._moved = []

    def _saved(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "old_p" not in state:
            state["old_p"] = torch.empty_like(p)
        return state["old_p"]

    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore w exactly from the saved copy; the gradient (taken at w + eps) stays.

        Restores exactly the parameters ``first_step`` moved, whether or not the second
        pass gave them a gradient (a weight-dependent route, e.g. a mixture of experts,
        may use other parameters at w + eps). In wd_mode="loss" first adds the L2
        gradient at the perturbed point, l2 (w + eps), to the descent gradient.
        """
        if not self.perturbed:
            return
        for group in self.param_groups:
            params = self._with_grad(group)
            if params and group["l2"]:
                torch._foreach_add_([p.grad for p in params], params, alpha=group["l2"])
        self._restore_moved()
        self.perturbed = False

    @torch.no_grad()
    def clip_grad_norm_(self) -> None:
        """Scale the descent gradient so its global L2 norm is <= max_grad_norm (if set)."""
        if self.max_grad_norm is not None:
            params = [p for g in self.param_groups for p in self._with_grad(g)]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w exactly, clip the descent gradient (if set), take the base step."""
        self.unperturb()
        self.clip_grad_norm_()
        self.base_optimizer.step()
        self._opt_called = True  # tells LR schedulers that this optimizer has stepped
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Tensor] | None = None,  # type: ignore[override]
             model: nn.Module | None = None) -> Tensor:
        """Full SAM step. ``closure`` computes the loss and calls ``backward`` (it may
        zero the gradients itself); it is evaluated at w and at w + eps with the same
        random draws (dropout, shake). Pass the ``model`` so that its BatchNorm layers
        change their running statistics in the first evaluation only (without it the
        second updates them too). Returns the loss at w."""
        if closure is None:
            raise ValueError("SAM.step needs a closure; or call first_step/second_step")
        self.zero_grad()
        rng = RngReplay(self.param_groups[0]["params"][0].device)
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        rng.replay()
        with torch.enable_grad(), frozen_bn_stats(model) if model is not None else nullcontext():
            closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum buffers, groups incl. rho and lr)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()`` and keep the groups shared with the base optimizer."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


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


class RngReplay:
    """Snapshot of the RNG of a device, to replay the same dropout/shake draws in every
    pass of one step (the clean and the perturbed pass see the same random network)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


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
            if shards == 1:
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
            ascent_sync = ddp if sync_ascent else None
            if ascent_sync is not None and shards > 1:
                raise ValueError(f"sync_ascent averages the ascent over the ranks: it needs "
                                 f"one shard per rank (m=None), got m={m} for a local batch "
                                 f"of {batch}")
            if shards == 1:
                loss, out = _sam_shard(model, sam, loss_fn, inputs, targets, amp_dtype,
                                       scaler, ascent_sync)
            elif _vmap_wanted(shard_impl, sam, inputs.device, shards, scaler):
                loss, out = _sam_shards_vmap_or_loop(model, sam, loss_fn, inputs, targets, m,
                                                     amp_dtype, scaler, shard_impl)
            else:
                loss, out = _sam_shards(model, sam, loss_fn, inputs, targets, m, amp_dtype,
                                        scaler)
        if ddp is not None:
            _average_across_ranks(ddp, optimizer, with_bn=True)
    _base_step(optimizer, scaler, sam)
    return (loss, out) if return_outputs else loss


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


def _sam_shard(model, optimizer, loss_fn, x, y, amp_dtype, scaler,
               ascent_sync: DistributedDataParallel | None = None) -> tuple[Tensor, Tensor]:
    """Clean pass, ascent, perturbed pass, restore: p.grad holds grad L(w + eps).
    With ``ascent_sync`` (a DDP model) the clean gradient is first averaged over ranks."""
    rng = RngReplay(x.device)
    loss, out = _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)
    if ascent_sync is not None:
        _average_across_ranks(ascent_sync, optimizer, with_bn=False)
    optimizer.first_step(zero_grad=True)
    rng.replay()
    with frozen_bn_stats(model):
        _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)
    optimizer.unperturb()
    return loss, out


def _sam_shards(model, optimizer, loss_fn, x, y, m, amp_dtype, scaler) -> tuple[Tensor, Tensor]:
    """m-sharpness: per-shard SAM gradients averaged; BN stats averaged over shards."""
    return _shards(model, optimizer, x, y, m, lambda xs, ys: _sam_shard(
        model, optimizer, loss_fn, xs, ys, amp_dtype, scaler), keep_unused_none=False)


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
    bn_buffers = [b for bn in _batch_norms(model) if bn.track_running_stats
                  for b in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
                  if b is not None]
    start = [b.clone() for b in bn_buffers]
    bn_sum = [torch.zeros_like(b, dtype=torch.float64) for b in bn_buffers]
    grad_sum = [torch.zeros_like(p) for p in params]
    used = [not keep_unused_none] * len(params)
    losses, outs = [], []
    for xs, ys in zip(x.split(m), y.split(m), strict=True):
        if bn_buffers:
            torch._foreach_copy_(bn_buffers, start)
        optimizer.zero_grad(set_to_none=True)
        loss, out = shard_step(xs, ys)
        losses.append(loss)
        outs.append(out)
        for total, b in zip(bn_sum, bn_buffers, strict=True):
            total.add_(b)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        used = [u or p.grad is not None for u, p in zip(used, params, strict=True)]
        torch._foreach_add_(grad_sum, grads)
    shards = len(losses)
    with torch.no_grad():
        for b, total in zip(bn_buffers, bn_sum, strict=True):
            b.copy_(total / shards)
        for p, g, u in zip(params, torch._foreach_div(grad_sum, shards), used, strict=True):
            p.grad = g if u else None
    return torch.stack(losses).mean(), torch.cat(outs)


def _vmap_wanted(impl: str, optimizer: SAM, device: torch.device, shards: int,
                 scaler: torch.amp.GradScaler | None) -> bool:
    """Whether the k shards run batched with vmap (see sam_step's ``shard_impl``)."""
    if impl not in ("auto", "loop", "vmap"):
        raise ValueError(f"shard_impl must be auto, loop or vmap, got {impl!r}")
    if impl != "auto":
        return impl == "vmap"
    numel = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    many = shards >= (4 if device.type == "cuda" else 64)
    return (many and shards * numel <= 2**28 and scaler is None
            and not getattr(optimizer, "vmap_failed", False))


def _sam_shards_vmap_or_loop(model, optimizer, loss_fn, x, y, m, amp_dtype, scaler,
                             impl: str) -> tuple[Tensor, Tensor]:
    """vmap; in "auto" mode a layer that vmap cannot batch falls back to the loop (the
    vmap path changes no state before it succeeds; the RNG is replayed)."""
    if scaler is not None:
        raise ValueError("shard_impl='vmap' does not support a GradScaler; use 'loop'")
    net = model.module if isinstance(model, DistributedDataParallel) else model
    net = getattr(net, "_orig_mod", net)  # torch.compile'd: vmap the eager module
    rng = RngReplay(x.device)
    try:
        return _sam_shards_vmap(net, optimizer, loss_fn, x, y, m, amp_dtype)
    except RuntimeError as err:
        if impl == "vmap":
            raise
        warnings.warn(f"m-sharpness: vmap failed ({err}); using the per-shard loop",
                      stacklevel=3)
        optimizer.vmap_failed = True
        rng.replay()
        return _sam_shards(model, optimizer, loss_fn, x, y, m, amp_dtype, scaler)


def _sam_shards_vmap(model, optimizer, loss_fn, x, y, m, amp_dtype) -> tuple[Tensor, Tensor]:
    """m-sharpness with all k shards at once (torch.func.vmap over the shard axis): the
    same math as the loop, per-shard g_i, eps_i and grad L_i(w + eps_i), in two batched
    passes instead of 2k small ones. Each shard updates its own copy of the BatchNorm
    buffers in the clean pass; the model keeps their mean, as in the loop."""
    from torch.func import functional_call, grad, vmap

    k = x.shape[0] // m
    # contiguous (NCHW) layouts: vmap has no fast batching rule for some channels_last ops
    xs, ys = x.contiguous().reshape(k, m, *x.shape[1:]), y.reshape(k, m)
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


def _shard_perturbed(groups: dict[str, dict], params: dict[str, Tensor],
                     grads: dict[str, Tensor], k: int) -> dict:
    """w + eps_i for each shard i (leading axis k), with SAM.first_step's formulas and
    the L2 norm taken per shard over all parameters. ``groups`` gives each parameter's
    optimizer group, ``params`` its (contiguous) value."""
    ascent, scales = {}, {}
    w0 = next(iter(params.values()))
    sq = torch.zeros(k, device=w0.device, dtype=w0.dtype)
    for n, w in params.items():
        group = groups[n]
        a = grads[n] + group["l2"] * w if group["l2"] else grads[n]
        t = w.abs() + group["eta"] if group["adaptive"] else None
        ascent[n], scales[n] = a, t
        if group["p"] == 2:
            sq = sq + (a * t if t is not None else a).flatten(1).pow(2).sum(1)
    norm = sq.sqrt()
    out = {}
    for n, w in params.items():
        group, a, t = groups[n], ascent[n], scales[n]
        if group["p"] == 2:
            e = a * (group["rho"] / (norm + _GUARD)).view(k, *[1] * w.dim())
            e = e * (t * t) if t is not None else e
        else:
            e = group["rho"] * a.sign() + 0.0 * a  # 0 a: non-finite a -> NaN, as first_step
            e = e * t if t is not None else e
        out[n] = w + e
    return out


def _base_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    sam: SAM | None,
) -> None:
    """Unscale (fp16), clip (SAM's max_grad_norm) and apply the descent gradient."""
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
