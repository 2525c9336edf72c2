"""GSAM, surrogate-gap guided SAM (Zhuang et al., ICLR 2022; Algorithm 1 and the authors'
juntang-zhuang/GSAM code, gsam/gsam.py): SAM plus a step that lowers the surrogate gap
h(w) = L(w + eps) - L(w) without changing L(w + eps) to first order.

With g the clean gradient at w and g_p the gradient at w + eps (both of L_t: plus the
L2 term in wd_mode="loss", whose loss both passes share), norms over all parameters:

    rho_t = rho_min + (rho - rho_min) (lr_t - lr_min) / (lr_max - lr_min)   (rho_t = rho
            when rho_min = rho; lr_max: the group's lr when built, lr_t: its current lr)
    eps   = rho_t g / ||g||                                                (SAM's ascent)
    g_perp = g - (<g, g_p> / (||g_p||^2 + 1e-12)) g_p
    d     = g_p - alpha g_perp                                      (the descent gradient)

alpha = 0, rho_min = rho is SAM. Per shard (m-sharpness) and per rank, as the authors'
DDP code decomposes each worker's gradients before the all-reduce. Nothing is kept
across steps: the rho schedule reads the lr, which the checkpoint holds.

The rho schedule is the authors' ``ProportionScheduler`` (juntang-zhuang/GSAM,
gsam/scheduler.py at commit cddec89515ef83508697f537f50ed38e5819cd52, the last to change
it; HEAD a770275b): the same linear map of the lr, NOT clamped. Where lr_t < lr_min,
in a warmup from near 0 or at the end of a cosine that ends at 0 while lr_min > 0,
rho_t falls below rho_min, as theirs does (their assert only asks lr_max > lr_min, or
both equal with rho constant). It would turn negative where lr_t < lr_min - rho_min
(lr_max - lr_min)/(rho - rho_min); sam-train refuses an lr_min that allows it at
lr_t = 0, lr_min/lr_max > rho_min/rho (sam.settings.checks). rho_t reads the lr of the
step it perturbs for (the group's lr at ``first_step``), as their example/train.py does
from its second step on (it steps the lr scheduler, then rho, after each step; its first
rho comes from the lr scheduler's initial value, not the optimizer's lr: a wiring quirk
not copied).
"""

from __future__ import annotations

from typing import Any

import torch

from .perturbation import keep_clean_grads
from .sam import SAM

_EPS = 1e-12  # the authors' perturb_eps in <g, g_p> / (||g_p||^2 + eps)


class GSAM(SAM):
    """SAM with GSAM's descent d = g_p - alpha g_perp and rho_t following the lr
    (module docstring). ``rho`` is rho_max; ``rho_min`` None means a constant rho."""

    shards = "loop"  # the decomposition runs in unperturb: not in the batched shards

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer],
                 rho: float = 0.05, alpha: float = 0.4, rho_min: float | None = None,
                 lr_min: float = 0.0, **kwargs: Any) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if rho_min is not None and not 0 <= rho_min <= rho:
            raise ValueError(f"rho_min must be in [0, rho={rho}], got {rho_min}")
        super().__init__(params, base_optimizer, rho=rho, **kwargs)
        if rho_min is not None and rho_min < rho and any(
                g["lr"] <= lr_min for g in self.param_groups):  # the authors' assert
            raise ValueError(f"lr_min={lr_min} must lie below the lr for rho to follow it "
                             f"down to rho_min")
        if self.shard_passes is not None:
            raise ValueError("GSAM does not combine with the SAM ablations")
        self.alpha, self.lr_min = alpha, lr_min
        for group in self.param_groups:
            group.setdefault("rho_max", group["rho"])
            group.setdefault("rho_min", group["rho"] if rho_min is None
                             else min(rho_min, group["rho"]))
            group.setdefault("lr_max", group["lr"])

    def rho_t(self, group: dict) -> float:
        """rho_min + (rho_max - rho_min) (lr - lr_min) / (lr_max - lr_min); rho_max when
        rho_min = rho_max or lr_max = lr_min."""
        lo, hi = group["rho_min"], group["rho_max"]
        if lo == hi or group["lr_max"] == self.lr_min:
            return hi
        return lo + (hi - lo) * (group["lr"] - self.lr_min) / (group["lr_max"] - self.lr_min)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Keep the clean gradient g (+ l2 w), then SAM's ascent with rho_t."""
        for group in self.param_groups:
            group["rho"] = self.rho_t(group)
        if self.alpha:
            keep_clean_grads(self)
        super().first_step(zero_grad)

    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore w; p.grad <- g_p - alpha g_perp (g_p: the gradient at w + eps)."""
        if not self.perturbed:
            return
        moved = list(self._moved)
        super().unperturb()
        if not self.alpha or not moved:
            return
        for p in moved:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        gp = [p.grad for p in moved]
        g = [self.state[p].pop("clean_g") for p in moved]
        inner = torch.stack([(a * b).sum() for a, b in zip(g, gp, strict=True)]).sum()
        gp_sq = torch.stack([(b * b).sum() for b in gp]).sum()
        coef = inner / (gp_sq + _EPS)
        # d = g_p - alpha (g - coef g_p) = (1 + alpha coef) g_p - alpha g
        torch._foreach_mul_(gp, 1 + self.alpha * coef)
        torch._foreach_add_(gp, g, alpha=-self.alpha)
