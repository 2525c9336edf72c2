"""m-sharpness (SAM paper, Foret et al., ICLR 2021, section 4.1), for any torch model.

The mean over disjoint shards S of m training examples of

    ``max_{||eps||_p <= rho} L_S(w + eps) - L_S(w)``,

the max approximated by projected normalised-gradient ascent (:func:`m_sharpness`). Imports
:mod:`sam.errors` and the RNG replay of :mod:`sam.optim` from the project.
"""

import math

import torch
from torch import Tensor, nn

from sam.errors import UserError
from sam.optim import RngReplay
from sam.sharpness._common import LossFn, check_positive, trainable_params


def m_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    m: int,
    rho: float,
    ascent_steps: int = 1,
    p: float = 2,
) -> float:
    """m-sharpness (paper section 4.1): the mean over the ``len(x) / m`` disjoint shards S of

        ``max_{||eps||_p <= rho} L_S(w + eps) - L_S(w)``,

    ``L_S = loss_fn(model(x_S), y_S)`` the shard-mean loss, shards taken in order. The max is
    approximated by ``ascent_steps`` steps of projected normalised-gradient ascent from eps = 0,

        ``eps <- Proj_{||.||_p <= rho}(eps + rho d(g))``, ``g = grad L_S(w + eps)``,

    with ``d(g) = g / ||g||_2`` for p = 2 and ``sign(g)`` for p = inf, so one step is SAM's
    ``eps = rho g / ||g||_2`` (resp. ``rho sign(g)``); the value is the largest loss increase
    over the visited points. Only p in {2, inf} is supported.

    The model's mode is left to the caller (train mode measures what SAM's training step sees).
    The trainable weights are restored exactly from a saved copy, and all buffers (e.g.
    BatchNorm running statistics) are saved and restored too, so the measurement changes
    nothing; parameter ``.grad`` fields are not touched.
    """
    _check_m_sharpness_args(len(x), m, rho, ascent_steps, p)
    params = trainable_params(model)
    saved_params = [q.detach().clone() for q in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    try:
        gaps = [
            _shard_sharpness(model, loss_fn, x[i : i + m], y[i : i + m], rho, ascent_steps, p)
            for i in range(0, len(x), m)
        ]
    finally:
        with torch.no_grad():
            for q, saved in zip(params, saved_params, strict=True):
                q.copy_(saved)
            for b, saved in zip(model.buffers(), saved_buffers, strict=True):
                b.copy_(saved)
    return sum(gaps) / len(gaps)


def _check_m_sharpness_args(n: int, m: int, rho: float, ascent_steps: int, p: float) -> None:
    check_positive("m", m)
    check_positive("ascent_steps", ascent_steps)
    if n % m != 0:
        raise UserError(f"m_sharpness: m={m} does not divide the {n} examples: pick m | {n}")
    if rho < 0:
        raise UserError(f"m_sharpness: rho must be >= 0, got {rho}")
    if p not in (2, math.inf):
        raise UserError(f"m_sharpness: p={p} is not supported: use p=2 or p=float('inf')")


def _shard_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    rho: float,
    ascent_steps: int,
    p: float,
) -> float:
    """``max_t L_S(w + eps_t) - L_S(w)`` over the ascent iterates ``eps_1 .. eps_T``.

    Every pass replays the RNG of the first, so in train mode dropout and shake-style
    layers draw the same masks at w and at w + eps (as in SAM's training step): the
    gap measures the weights' move, not a change of random network.
    """
    params = trainable_params(model)
    origin = [q.detach().clone() for q in params]
    eps = [torch.zeros_like(q) for q in params]
    rng = RngReplay(x.device)
    base, grads = _loss_and_grad(model, loss_fn, x, y, params)
    best = -math.inf
    for step in range(ascent_steps):
        eps = _ascent_step(eps, grads, rho, p)
        with torch.no_grad():
            for q, w0, e in zip(params, origin, eps, strict=True):
                q.copy_(w0 + e)
        rng.replay()
        if step == ascent_steps - 1:
            with torch.no_grad():
                loss = float(loss_fn(model(x), y))
        else:
            loss, grads = _loss_and_grad(model, loss_fn, x, y, params)
        best = max(best, loss - base)
    with torch.no_grad():
        for q, w0 in zip(params, origin, strict=True):
            q.copy_(w0)
    return best


def _loss_and_grad(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: list[nn.Parameter]
) -> tuple[float, list[Tensor]]:
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return float(loss.detach()), list(grads)


def _ascent_step(eps: list[Tensor], grads: list[Tensor], rho: float, p: float) -> list[Tensor]:
    """One projected normalised-gradient step ``Proj(eps + rho d(g))`` onto the rho-ball."""
    if p == 2:
        gnorm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        gnorm = gnorm.clamp_min(torch.finfo(gnorm.dtype).tiny)
        new = [e + rho * g / gnorm for e, g in zip(eps, grads, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([e.norm() for e in new]))
        shrink = torch.clamp(rho / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
        return [e * shrink for e in new]
    return [
        torch.clamp(e + rho * torch.sign(g), -rho, rho) for e, g in zip(eps, grads, strict=True)
    ]
