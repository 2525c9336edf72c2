"""LookSAM (Liu et al., CVPR 2022, "Towards Efficient and Scalable Sharpness-Aware
Minimization"): the full SAM gradient every k steps only, its component orthogonal to
the clean gradient reused in between. The rule as two independent transcriptions give it
(the paper text and any official code were not available; see docs/variants.md):

With g the clean gradient at w (of L_t: plus l2 w in wd_mode="loss"), norms global:

    t mod k == 0:  g_s = grad L_t(w + eps), eps = rho g / ||g||        (a SAM step)
                   g_v = g_s - (<g_s, g> / (||g||^2 + 1e-12)) g        (kept)
                   descent gradient g_s
    otherwise:     descent gradient g + alpha (||g|| / (||g_v|| + 1e-12)) g_v   (one pass)

t counts sam_step calls from 0 (``looksam_step`` in the first param group); g_v is kept
in the base optimizer's per-parameter state (``looksam_g_v``): both are in
``state_dict()``, so a resumed run continues exactly. Cost: 1 + 1/k gradient passes per
step. State is per process: no m-sharpness shards and no DDP ranks (each would need its
own g_v); no GradScaler (an overflowing SAM step would store a non-finite g_v).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .args import check_count
from .passes import _forward_backward, _sam_passes
from .perturbation import _GUARD, _with_grad, keep_clean_grads
from .sam import SAM


def _looksam_passes(model, opt: LookSAM, loss_fn, x, y, amp_dtype, scaler,
                    ascent_sync=None, ascent_context=None) -> tuple[Tensor, Tensor]:
    """A SAM step (storing g_v) when t mod k == 0 or no g_v is stored yet, else one
    clean pass whose gradient gets the reused component (module docstring)."""
    if scaler is not None:
        raise ValueError("LookSAM does not support a GradScaler (fp16): use bf16 or fp32")
    first = opt.param_groups[0]
    t = first.get("looksam_step", 0)
    first["looksam_step"] = t + 1
    if t % opt.k == 0 or not opt.has_g_v():
        return _sam_passes(model, opt, loss_fn, x, y, amp_dtype, scaler, ascent_sync,
                           ascent_context)
    loss, out = _forward_backward(model, loss_fn, x, y, amp_dtype, scaler)
    opt.reuse_()
    return loss, out


def _norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2)), 2)


class LookSAM(SAM):
    """SAM every ``k`` steps; in between the clean gradient plus the kept orthogonal
    component, rescaled to alpha ||g|| (module docstring)."""

    shards = "none"
    shard_passes = staticmethod(_looksam_passes)

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer],
                 rho: float = 0.05, k: int = 5, alpha: float = 0.7, **kwargs: Any) -> None:
        check_count("k", k)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        super().__init__(params, base_optimizer, rho=rho, **kwargs)
        if self.shard_passes is not _looksam_passes:
            raise ValueError("LookSAM does not combine with the SAM ablations")
        self.k, self.alpha = k, alpha

    def _kept(self, p: Tensor) -> dict:
        return self.base_optimizer.state[p]

    def has_g_v(self) -> bool:
        """Whether a SAM step has stored g_v (the first step is always a SAM step)."""
        return any("looksam_g_v" in self._kept(p)
                   for g in self.param_groups for p in g["params"])

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Keep the clean gradient g (+ l2 w), then SAM's ascent."""
        keep_clean_grads(self)
        super().first_step(zero_grad)

    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore w; keep g_v = g_s - (<g_s, g> / ||g||^2) g (g_s: the descent gradient)."""
        if not self.perturbed:
            return
        moved = list(self._moved)
        super().unperturb()
        if not moved:
            return
        gs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in moved]
        g = [self.state[p].pop("clean_g") for p in moved]
        inner = torch.stack([(a * b).sum() for a, b in zip(g, gs, strict=True)]).sum()
        coef = inner / (_norm(g) ** 2 + _GUARD)
        for p, a, b in zip(moved, g, gs, strict=True):
            self._kept(p)["looksam_g_v"] = b - coef * a

    @torch.no_grad()
    def reuse_(self) -> None:
        """p.grad <- g + alpha (||g|| / ||g_v||) g_v, g = the clean gradient (+ l2 w)."""
        self.add_l2_grad_()
        params = [p for group in self.param_groups for p in _with_grad(group)
                  if "looksam_g_v" in self._kept(p)]
        if not params:
            return
        grads = [p.grad for p in params]
        g_v = [self._kept(p)["looksam_g_v"] for p in params]
        scale = self.alpha * _norm(grads) / (_norm(g_v) + _GUARD)
        torch._foreach_add_(grads, torch._foreach_mul(g_v, scale))
