"""The SAM optimizer (Foret et al., ICLR 2021) around any torch optimizer.

Read beside the paper, with g = grad L_S(w) on the batch (eq. 3 drops the Hessian term of
the full derivative; p=inf and ASAM change eps only, see perturbation.py):

    eq. 2   eps(w) = rho g / ||g||_2                      first_step:  w -> w + eps
    eq. 3   grad L^SAM(w) ~= grad L_S(w) |_(w + eps(w))   unperturb:   back to w exactly;
                                                          second_step: base step with it

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
  (e.g. 0 for a "no decay on BatchNorm" group), kept as the group's ``l2``.

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

from .batchnorm import frozen_bn_stats
from .perturbation import _asam_stretch_, _ascent_grads, _ascent_norm, _eps, _with_grad
from .rng import RngReplay


class SAM(torch.optim.Optimizer):
    """SAM wrapper around a base optimizer class.

    Ascent: eps = rho g / ||g||_2 (p=2, norm over ALL parameters of all groups) or
    eps = rho sign(g) (p=inf); ASAM (adaptive=True) scales by T_w = |w| + eta.
    Descent: the gradient taken at w + eps drives the base optimizer from the
    restored (bit-identical) w.
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
        for group in self.param_groups:
            params = _with_grad(group)
            if params and group["l2"]:
                torch._foreach_add_([p.grad for p in params], params, alpha=group["l2"])
        self._restore_moved()
        self.perturbed = False

    @torch.no_grad()
    def clip_grad_norm_(self) -> None:
        """Scale the descent gradient so its global L2 norm is <= max_grad_norm (if set)."""
        if self.max_grad_norm is not None:
            params = [p for g in self.param_groups for p in _with_grad(g)]
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
        with torch.enable_grad():
            if model is None:
                closure()
            else:
                with frozen_bn_stats(model):
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
