"""Scale a tensor by one factor on the forward pass and another on the backward pass, and
the official code's ``true_gradient`` switch that makes both factors the forward one.

This is the trick shared by Shake-Shake (Gastaldi 2017) and ShakeDrop (Yamada et al. 2018):
the forward pass sees ``forward_scale * x`` while the gradient flowing back to ``x`` is
``backward_scale * grad``. Both scales are drawn by the caller in the forward pass, from
torch's global generator, so two passes that start from the same RNG state (as SAM's ascent
and descent passes do) see identical values and produce identical gradients.

google-research/sam runs SAM's ascent pass with ``true_gradient=True``
(``sam_jax/models/utils.py:105-118, 166-183``): Shake-Shake returns ``x_forward`` and
ShakeDrop ``x * rand_forward``, so the gradient of that pass is the true gradient of the
function computed, through the forward gate; the descent pass uses the backward gate.
``with true_gradient(model):`` does the same here for every ``ShakeModule`` in ``model``.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def shake_scale(x: Tensor, forward_scale: Tensor, backward_scale: Tensor) -> Tensor:
    """Return ``forward_scale * x`` whose gradient w.r.t. ``x`` uses ``backward_scale``.

    y = b x + stop_gradient((f - b) x): the value is f x, the gradient b. Plain tensor
    ops (no custom autograd.Function), so torch.func.vmap and torch.compile see through
    it. The scales broadcast against ``x`` (typically ``(B, 1, 1, 1)``, one per sample)
    and receive no gradient.
    """
    return x * backward_scale + (x * (forward_scale - backward_scale)).detach()


def per_sample_uniform(x: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """One ``U(low, high)`` draw per sample of ``x``, shaped ``(B, 1, 1, 1)`` for broadcasting.

    Drawn from torch's global generator of ``x.device``, so ``torch.manual_seed`` (or a saved
    RNG state) reproduces it.
    """
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    u = torch.rand(shape, device=x.device, dtype=x.dtype)
    return low + (high - low) * u


class ShakeModule(nn.Module):
    """A module mixing with a forward gate and an independent backward gate (Shake-Shake
    block, ShakeDrop). While ``true_gradient`` is set (see ``true_gradient()``) its
    training forward returns the forward-gated value with its true gradient; it still
    draws the backward gate, so the random stream advances exactly as without it, and
    adds ``0 * backward gate`` to the forward gate (exactly the same number): a compiled
    graph (torch.compile's AOT autograd) would drop an unused random draw and shift every
    later one, so that the perturbed pass's replay would no longer see the same gates."""

    true_gradient: bool = False  # class default; true_gradient() sets it per instance


@contextmanager
def true_gradient(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the ``with``, every ``ShakeModule`` of ``model`` backpropagates through its
    forward gate (google-research/sam's ``true_gradient=True``, used for SAM's ascent pass).

    ``model`` may be a ``torch.compile`` or DistributedDataParallel wrapper: their
    ``modules()`` include the wrapped model's. Each module's previous setting is restored
    on exit (nesting is fine); outside the context the models compute exactly as before.
    Under torch.compile the switch is a guarded attribute: one extra graph, compiled once.
    """
    shakers = [m for m in model.modules() if isinstance(m, ShakeModule)]
    # the instance's own setting, or None for the class default (restored as it was, so
    # that torch.compile's guards see the same attribute as before the context)
    previous = [vars(m).get("true_gradient") for m in shakers]
    for m in shakers:
        m.true_gradient = True
    try:
        yield model
    finally:
        for m, before in zip(shakers, previous, strict=True):
            if before is None:
                del m.true_gradient
            else:
                m.true_gradient = before
