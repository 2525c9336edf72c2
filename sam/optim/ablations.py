"""The SAM paper's ablations (Foret et al., ICLR 2021, App. C.4-C.6) as options of ``SAM``,
taken by ``sam_step`` (one shard's passes, in place of passes.py's ``_sam_passes``).

With a = grad L_t(w) the clean ascent gradient (L_t: the loss plus l2/2 ||w||^2 when
wd_mode="loss"), D = diag(rho of each parameter's group) and ||.||_P the L2 norm over the
groups with rho > 0 (``SAM.first_step``: eps = D a / ||a||_P):

``ascent_steps=k`` (C.6, "several iterations of projected gradient ascent"; the paper
gives neither the step size nor the projection, so this is our choice): in the
coordinates delta = D^-1 eps, whose ball ||delta||_P <= 1 is SAM's constraint,

    delta_1 = a_1 / ||a_1||_P                        (= SAM's eps: k = 1 is SAM)
    delta_j = Pi(delta_(j-1) + a_j / ||a_j||_P),  Pi(d) = d / max(1, ||d||_P),  j = 2..k

with a_j = grad L_t(w + D delta_(j-1)): each step a unit (rho-sized) normalized-gradient
step, projected back onto the rho-ball. k passes at w + eps in all, the last the descent.

``second_order=True`` (C.4): the exact gradient of L_t(w + eps(w)). With
v = grad L_t(w + eps) (what SAM descends along), n = ||a||_P + 1e-12 and H_t the Hessian
of L_t at w, d eps/dw = (D/n - D a (P a)^T / (||a||_P n^2)) H_t, so

    grad = v + H_t u,   u = (D v - P a (a^T D v) / (||a||_P n)) / n

H_t u = H u + l2 u, H u a Hessian-vector product (double backward) in a third pass at w
(same random draws, frozen BatchNorm buffers). p = 2, not ASAM.

``ascent="random"`` (C.5): eps = D z / ||z||_P, z ~ N(0, I), drawn on the parameters'
device from a generator seeded with seed * 1000003 + i, i the draw's index: draws so far
(``ascent_draws`` in the first param group, so a resumed run draws what it would have
drawn) plus the rank under DDP, where each rank counts W draws a step. So W ranks draw
what W shards of one process draw (m-sharpness); with sync_ascent all draw the same.
The clean pass still runs (loss, BatchNorm update); its gradient is not used. With
sync_ascent every step of ``ascent_steps`` takes the rank-averaged gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .args import check_count
from .batchnorm import frozen_bn_stats
from .ddp import _average_across_ranks
from .passes import _forward_backward
from .perturbation import _GUARD, _ascent_grads, _with_grad
from .rng import RngReplay


def ablation_passes(opt) -> Callable:
    """Check a SAM optimizer's ablation options; the passes that take them."""
    k, second, ascent = opt.ascent_steps, opt.second_order, opt.ascent
    check_count("ascent_steps", k)
    if ascent not in ("gradient", "random"):
        raise ValueError(f"ascent must be 'gradient' or 'random', got {ascent!r}")
    if (k > 1) + bool(second) + (ascent == "random") > 1:
        raise ValueError("ascent_steps > 1, second_order and ascent='random' are separate "
                         "ablations: pick one")
    if any(g["p"] != 2 or g["adaptive"] for g in opt.param_groups):
        raise ValueError("the ablations (ascent_steps, second_order, ascent='random') "
                         "need p=2 and adaptive=False")
    return _passes


def _passes(model, opt, loss_fn, x, y, amp_dtype, scaler, ascent_sync=None,
            ascent_context=None) -> tuple[Tensor, Tensor]:
    """Clean pass, the ablation's ascent, perturbed pass(es), restore (and, for
    second_order, the Hessian term): p.grad holds the ablation's descent gradient."""
    if opt.second_order and (scaler is not None or ascent_sync is not None):
        raise ValueError("second_order supports neither a GradScaler (fp16) nor "
                         "sync_ascent")
    rng = RngReplay(x.device)
    with ascent_context() if ascent_context is not None else nullcontext():
        loss, out = _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)
    if ascent_sync is not None:
        _average_across_ranks(ascent_sync, opt, with_bn=False)

    def perturbed_pass() -> None:
        opt.zero_grad(set_to_none=True)
        rng.replay()
        with frozen_bn_stats(model):
            _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)

    if opt.ascent == "random":
        _random_first_step(opt, shared=ascent_sync is not None)
    elif opt.second_order:
        clean = _clean_ascent(opt)
        opt.first_step()
    else:
        opt.first_step()
        delta = _unit_offsets(opt)
        for _ in range(opt.ascent_steps - 1):
            perturbed_pass()
            if ascent_sync is not None:  # every ascent step on the global batch
                _average_across_ranks(ascent_sync, opt, with_bn=False)
            _ascend_(opt, delta)
    moved = _perturbed_groups(opt, every=True)
    perturbed_pass()
    opt.unperturb()
    if opt.second_order:
        rng.replay()
        with ascent_context() if ascent_context is not None else nullcontext():
            _add_hessian_term_(model, moved, loss_fn, x, y, amp_dtype, clean)
    return loss, out


def _perturbed_groups(opt, every: bool = False) -> list[tuple[dict, list[Tensor]]]:
    """(group, the parameters first_step moved) for the groups with rho > 0, or for all
    groups with ``every``."""
    moved = {id(p) for p in opt._moved}
    return [(g, [p for p in g["params"] if id(p) in moved]) for g in opt.param_groups
            if g["rho"] or every]


def _norm_p(tensors: list[Tensor]) -> Tensor:
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2)), 2)


@torch.no_grad()
def _unit_offsets(opt) -> dict[int, Tensor]:
    """delta = D^-1 eps = (w + eps - w) / rho after first_step, per moved parameter."""
    return {id(p): (p - opt.state[p]["old_p"]) / g["rho"]
            for g, params in _perturbed_groups(opt) for p in params}


@torch.no_grad()
def _ascend_(opt, delta: dict[int, Tensor]) -> None:
    """One projected step: delta <- Pi(delta + a / ||a||_P), w <- w0 + D delta (p.grad
    holds the gradient at w + eps; plus l2 (w + eps) in wd_mode="loss")."""
    pairs = [(g, p) for g, params in _perturbed_groups(opt) for p in params]
    grads = []
    for g, p in pairs:
        a = p.grad if p.grad is not None else torch.zeros_like(p)
        grads.append(a + g["l2"] * p if g["l2"] else a)
    scale = 1.0 / (_norm_p(grads) + _GUARD)
    steps = [delta[id(p)].add_(a * scale.to(a.device)) for (_, p), a in zip(pairs, grads,
                                                                              strict=True)]
    shrink = 1.0 / torch.clamp(_norm_p(steps), min=1.0)
    for (g, p), d in zip(pairs, steps, strict=True):
        d.mul_(shrink.to(d.device))
        p.copy_(opt.state[p]["old_p"] + g["rho"] * d)


@torch.no_grad()
def _random_first_step(opt, shared: bool = False) -> None:
    """w -> w + D z / ||z||_P with SAM's bookkeeping (saved w, exact restore); every
    rank draws the same z when ``shared`` (sync_ascent)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and \
        dist.is_initialized() and not shared else (0, 1)
    draws = opt.param_groups[0].get("ascent_draws", 0)
    opt.param_groups[0]["ascent_draws"] = draws + world
    first = next(p for g in opt.param_groups for p in g["params"])
    index = draws + rank
    gen = torch.Generator(first.device).manual_seed((opt.seed * 1_000_003 + index) % 2**63)
    moving = [(g, p) for g in opt.param_groups for p in _with_grad(g)]
    noise = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
             if g["rho"] else None for g, p in moving]
    norm = _norm_p([z for z in noise if z is not None]) + _GUARD
    opt._moved = []
    for (g, p), z in zip(moving, noise, strict=True):
        opt._saved(p).copy_(p)
        opt._moved.append(p)
        if z is not None:
            p.add_(z * (g["rho"] / norm.to(p.device)))
    opt.perturbed = True
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def _clean_ascent(opt) -> dict[int, Tensor]:
    """The clean ascent gradient a = g + l2 w of every parameter with a gradient."""
    out = {}
    for g in opt.param_groups:
        params = _with_grad(g)
        if params:
            out.update(zip(map(id, params), (t.clone() for t in _ascent_grads(g, params)),
                           strict=True))
    return out


def _add_hessian_term_(model, moved: list[tuple[dict, list[Tensor]]], loss_fn, x, y,
                       amp_dtype, clean: dict[int, Tensor]) -> None:
    """p.grad += H_t u at w (module docstring) for every moved parameter, u nonzero on
    the perturbed groups only: a pass at w, double backward."""
    pairs = [(g, p) for g, params in moved for p in params]
    if not pairs or not any(g["rho"] for g, _ in pairs):
        return
    with torch.no_grad():
        on = [(g, p) for g, p in pairs if g["rho"]]
        a = [clean[id(p)] for _, p in on]
        dv = [g["rho"] * (p.grad if p.grad is not None else torch.zeros_like(p))
              for g, p in on]
        a_norm = _norm_p(a)
        n = a_norm + _GUARD
        s = torch.stack([(ai * di).sum() for ai, di in zip(a, dv, strict=True)]).sum()
        coef = torch.where(a_norm > 0, s / (a_norm * n), 0.0)
        u_on = {id(p): (di - ai * coef) / n for (_, p), ai, di in zip(on, a, dv, strict=True)}
        u = [u_on.get(id(p), torch.zeros_like(p)) for _, p in pairs]
    params = [p for _, p in pairs]
    with torch.enable_grad(), frozen_bn_stats(model):
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None), \
                sdpa_kernel(SDPBackend.MATH):  # fused attention has no double backward (ViTs)
            loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [(gr, ui) for gr, ui in zip(grads, u, strict=True)
                if gr is not None and gr.requires_grad]
        hvp = torch.autograd.grad([gr for gr, _ in used], params,
                                  grad_outputs=[ui for _, ui in used],
                                  allow_unused=True) if used else [None] * len(params)
    with torch.no_grad():
        for (g, p), hu, ui in zip(pairs, hvp, u, strict=True):
            term = ui * g["l2"] if g["l2"] else torch.zeros_like(ui)
            if hu is not None:
                term = term + hu
            p.grad = term if p.grad is None else p.grad.add_(term)
