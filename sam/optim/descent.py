"""The descent step SGD and SAM share: weight-decay convention, clipping, base step.

``Descent`` wraps a base optimizer class (SGD with Nesterov momentum in the paper) so
that a plain run and a SAM run end each step the same way:

* ``wd_mode="base"``: the base optimizer applies its own ``weight_decay`` (lambda w
  added inside its step, after any clipping), as torch optimizers do.
* ``wd_mode="loss"``: lambda/2 ||w||^2 is part of the loss, as in the official code:
  its gradient lambda w joins the data gradient before clipping, and the base optimizer
  runs with weight_decay 0 (passed explicitly: AdamW's own default is 0.01). A parameter
  group's own ``weight_decay`` is its lambda, kept as the group's ``l2``.
* ``max_grad_norm=c``: the final gradient t is clipped to global norm c exactly as the
  official code does, t <- t c / ||t|| when ||t|| >= c (no epsilon; the norm over all
  parameters of all groups).

SAM (sam.py) adds the ascent in front of this; ``Descent.step`` alone is one plain step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .perturbation import _with_grad


@torch.no_grad()
def clip_by_global_norm_(grads: list[Tensor], max_norm: float) -> None:
    """t <- t max_norm / ||t|| for every t in ``grads`` when ||t|| >= max_norm, the norm
    taken over all of them; unchanged below (no epsilon, no host sync)."""
    if not grads:
        return
    device = grads[0].device
    norm = torch.linalg.vector_norm(
        torch.stack([n.to(device) for n in torch._foreach_norm(grads, 2)]), 2)
    scale = torch.where(norm < max_norm, torch.ones_like(norm), max_norm / norm)
    torch._foreach_mul_(grads, scale)


class Descent(torch.optim.Optimizer):
    """A base optimizer class with SAM's descent conventions (module docstring):
    ``Descent(params, torch.optim.SGD, wd_mode="loss", max_grad_norm=5.0, lr=0.1, ...)``.
    Its param groups are the base optimizer's (schedulers see one learning rate)."""

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer],
                 wd_mode: str = "base", max_grad_norm: float | None = None,
                 extra_defaults: dict[str, Any] | None = None, **base_kwargs: Any) -> None:
        if wd_mode not in ("base", "loss"):
            raise ValueError(f"wd_mode must be 'base' or 'loss', got {wd_mode!r}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        l2 = 0.0
        if wd_mode == "loss":  # the base runs with weight_decay 0 (AdamW's default is 0.01)
            l2, base_kwargs["weight_decay"] = float(base_kwargs.get("weight_decay", 0.0)), 0.0
        self.wd_mode = wd_mode
        super().__init__(params, dict(**(extra_defaults or {}), l2=l2, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # shared: schedulers see one LR
        self.defaults.update(self.base_optimizer.defaults)
        self.max_grad_norm = max_grad_norm

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; in wd_mode="loss" its ``weight_decay`` becomes its L2 lambda."""
        if self.wd_mode == "loss" and "weight_decay" in param_group:
            param_group = dict(param_group)
            param_group["l2"] = float(param_group.pop("weight_decay"))
        super().add_param_group(param_group)

    @torch.no_grad()
    def add_l2_grad_(self) -> None:
        """p.grad += l2 p for every parameter with a gradient (wd_mode="loss"), at the
        parameters' current value."""
        for group in self.param_groups:
            params = _with_grad(group)
            if params and group["l2"]:
                torch._foreach_add_([p.grad for p in params], params, alpha=group["l2"])

    @torch.no_grad()
    def clip_grad_norm_(self) -> None:
        """Clip the gradient to global norm ``max_grad_norm`` (if set), exactly."""
        if self.max_grad_norm is not None:
            clip_by_global_norm_([p.grad for g in self.param_groups for p in _with_grad(g)],
                                 self.max_grad_norm)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One plain step on the gradients in p.grad: + l2 w, clip, base step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.add_l2_grad_()
        self.clip_grad_norm_()
        self.base_optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum buffers, groups incl. lr)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()`` and keep the groups shared with the base optimizer."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
