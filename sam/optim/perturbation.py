"""The ascent of SAM: the perturbation eps of the paper's eq. 2 and its variants, for
one optimizer group (foreach lists) and for k shards at once (vmap, leading axis k).

With g the ascent gradient, grad L_S(w) + l2 w (l2 = 0 unless wd_mode="loss"):

    p = 2:    eps = rho g / ||g||_2     (the norm over ALL parameters of all groups
                                         with rho > 0; a group's own rho scales its eps)
    p = inf:  eps = rho sign(g)

ASAM (adaptive=True, Kwon et al. 2021) uses T_w = |w| + eta on every parameter:

    p = 2:    eps = rho T_w^2 g / ||T_w g||_2
    p = inf:  eps = rho T_w sign(g)

(Kwon et al.'s code leaves biases unscaled: give them their own group with
adaptive=False to match it.) A zero gradient gives eps exactly 0 (``_GUARD``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_GUARD = 1e-12  # keeps rho / ||g|| finite for a zero gradient (eps is then exactly 0)


def _with_grad(group: dict) -> list[Tensor]:
    return [p for p in group["params"] if p.grad is not None]


def _ascent_grads(group: dict, params: list[Tensor]) -> list[Tensor]:
    """g + l2 w (l2: the group's L2 lambda in wd_mode="loss", else 0)."""
    grads = [p.grad for p in params]
    if group["l2"]:
        grads = torch._foreach_add(grads, params, alpha=group["l2"])
    return grads


def _ascent_norm(groups: list[dict], scales: Callable) -> Tensor:
    """||T_w g||_2 over all groups and parameters, the denominator of eps for p=2
    (T_w = ``scales(group, params)`` in an ASAM group, 1 elsewhere); a group with rho 0
    is not perturbed and not in the norm (SAM-ON: the norm over the perturbed groups)."""
    norms = []
    for group in groups:
        params = _with_grad(group)
        if not params or not group["rho"]:
            continue
        grads = _ascent_grads(group, params)
        if group["adaptive"]:
            grads = torch._foreach_mul(grads, scales(group, params))
        norms.extend(torch._foreach_norm(grads, 2))
    if not norms:
        return torch.zeros(())
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2)


def _eps(group: dict, grads: list[Tensor], norm: Tensor | None) -> list[Tensor]:
    """eps without ASAM's T_w: rho g / ||g|| (p=2, ``norm`` given) or rho sign(g)."""
    if group["p"] == 2:
        scale = group["rho"] / (norm.to(grads[0].device) + _GUARD)
        return torch._foreach_mul(grads, scale)
    eps = torch._foreach_sign(grads)
    torch._foreach_mul_(eps, group["rho"])
    # + 0 g: an inf in g makes eps NaN (sign(inf) alone is finite), so, as for p=2, an
    # overflow in the clean pass reaches the descent gradient and a GradScaler skips
    # the step and lowers its scale.
    torch._foreach_add_(eps, torch._foreach_mul(grads, 0.0))
    return eps


def _asam_stretch_(group: dict, eps: list[Tensor], scales: list[Tensor]) -> None:
    """ASAM, in place: eps *= T_w^2 (p=2; ``norm`` was ||T_w g||) or T_w (p=inf)."""
    if group["p"] == 2:
        torch._foreach_mul_(eps, torch._foreach_mul(scales, scales))
    else:
        torch._foreach_mul_(eps, scales)


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
        if group["p"] == 2 and group["rho"]:
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


def keep_clean_grads(optimizer: Any) -> None:
    """state[p]["clean_g"] <- g + l2 w for every parameter with a gradient: the clean-pass
    ascent gradient that GSAM and LookSAM combine with the gradient at w + eps."""
    for group in optimizer.param_groups:
        params = _with_grad(group)
        for p, a in zip(params, _ascent_grads(group, params), strict=True):
            optimizer.state[p]["clean_g"] = a.clone()
