"""The SAM optimizer (Foret et al., ICLR 2021) around any torch optimizer.

Read beside the paper, with g = grad L_S(w) on the batch (eq. 3 drops the Hessian term of
the full derivative; p=inf and ASAM change eps only, see perturbation.py):

    eq. 2   eps(w) = rho g / ||g||_2                      first_step:  w -> w + eps
    eq. 3   grad L^SAM(w) ~= grad L_S(w) |_(w + eps(w))   unperturb:   back to w exactly;
                                                          second_step: base step with it

Weight decay (``wd_mode``) and clipping (``max_grad_norm``) are the descent conventions
SAM shares with a plain step (descent.py). With ``wd_mode="loss"`` the L2 term
lambda/2 ||w||^2 is part of the loss of both passes, as in the official JAX code: the
ascent gradient is g + lambda w and the descent gradient grad L(w + eps) + lambda (w + eps).

fp16 with ``torch.amp.GradScaler``: eps = rho g / ||g|| is invariant to the loss
scale, so ``first_step`` may run on scaled gradients. Unscale (and clip) only the
descent gradient, on ``opt.base_optimizer``, after ``unperturb()``:
``opt.unperturb(); scaler.unscale_(opt.base_optimizer); scaler.step(opt.base_optimizer);
scaler.update()``. An inf/NaN in either pass makes the descent gradient non-finite,
so the scaler skips the base step while the weights are already restored exactly.
``sam_step(..., scaler=scaler)`` does all of this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .ablations import ablation_passes
from .batchnorm import frozen_bn_stats
from .descent import Descent
from .perturbation import _asam_stretch_, _ascent_grads, _ascent_norm, _eps, _with_grad
from .rng import RngReplay


class SAM(Descent):
    """SAM wrapper around a base optimizer class (its descent conventions: descent.py).

    Ascent: eps = rho g / ||g||_2 (p=2, norm over ALL parameters of all groups) or
    eps = rho sign(g) (p=inf); ASAM (adaptive=True) scales by T_w = |w| + eta.
    Descent: the gradient taken at w + eps drives the base optimizer from the
    restored (bit-identical) w. A group's own ``rho`` scales its eps; a group with rho 0
    is not perturbed and left out of ||g|| (SAM-ON: variants.py).

    The paper's ablations (ablations.py; taken by ``sam_step``): ``ascent_steps=k``
    (projected normalized-gradient ascent), ``second_order=True`` (the exact gradient
    of L(w + eps(w))), ``ascent="random"`` (eps = rho z/||z||, z ~ N(0, I) drawn from
    ``seed`` and the draw count).
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
        ascent_steps: int = 1,
        second_order: bool = False,
        ascent: str = "gradient",
        seed: int = 0,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if p not in (2, float("inf")):
            raise ValueError(f"p must be 2 or inf, got {p}")
        super().__init__(params, base_optimizer, wd_mode, max_grad_norm,
                         extra_defaults=dict(rho=rho, p=float(p), adaptive=adaptive, eta=eta),
                         **base_kwargs)
        self.perturbed = False
        self._moved: list[Tensor] = []  # what first_step perturbed: exactly what is restored
        # the paper's ablations (App. C.4-C.6): their passes live in ablations.py
        self.ascent_steps, self.second_order, self.ascent = ascent_steps, second_order, ascent
        self.seed = seed
        if (ascent_steps, second_order, ascent) != (1, False, "gradient"):
            self.shard_passes = ablation_passes(self)
            self.shards = "loop"

    # sam_step's passes on one shard (passes.py); a variant or ablation sets its own
    shard_passes: Callable | None = None
    # how sam_step may split a batch: "vmap" (m-sharpness shards, looped or batched with
    # _shard_perturbed's formulas, and DDP ranks), "loop" (no batched shards) or "none"
    # (state kept per process: neither shards nor ranks)
    shards = "vmap"

    @staticmethod
    def _scales(group: dict, params: list[Tensor]) -> list[Tensor]:
        """ASAM's T_w = |w| + eta."""
        return torch._foreach_add(torch._foreach_abs(params), group["eta"])

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save w and move to w + eps (eq. 2)."""
        if self.perturbed:
            raise RuntimeError("first_step called twice without unperturb/second_step")
        norm = None
        if any(g["p"] == 2 for g in self.param_groups):
            norm = _ascent_norm(self.param_groups, self._scales)
        self._moved = []
        try:  # every parameter with a gradient: save w, w <- w + eps
            for group in self.param_groups:
                params = _with_grad(group)
                if not params:
                    continue
                torch._foreach_copy_([self._saved(p) for p in params], params)
                self._moved.extend(params)
                eps = _eps(group, _ascent_grads(group, params), norm)
                if group["adaptive"]:
                    _asam_stretch_(group, eps, self._scales(group, params))
                torch._foreach_add_(params, eps)
        except BaseException:  # leave no parameter half-way: back to w, nothing recorded
            self._restore_moved()
            raise
        self.perturbed = True
        if zero_grad:
            self.zero_grad()

    def _saved(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "old_p" not in state:
            state["old_p"] = torch.empty_like(p)
        return state["old_p"]

    @torch.no_grad()
    def _restore_moved(self) -> None:
        if self._moved:
            torch._foreach_copy_(self._moved, [self.state[p]["old_p"] for p in self._moved])
        self._moved = []

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
        self.add_l2_grad_()  # at w + eps: the parameters are not restored yet
        self._restore_moved()
        self.perturbed = False

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
        if self.shard_passes is not None:
            raise ValueError(f"{type(self).__name__} with these options takes its steps "
                             "with sam_step")
        self.zero_grad()
        rng = RngReplay(self.param_groups[0]["params"][0].device)
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        rng.replay()
        with torch.enable_grad():
            if model is None:
                closure()
            else:
                with frozen_bn_stats(model):
                    closure()
        self.second_step()
        return loss
