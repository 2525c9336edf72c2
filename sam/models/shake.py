"""Scale a tensor by one factor on the forward pass and another on the backward pass.

This is the trick shared by Shake-Shake (Gastaldi 2017) and ShakeDrop (Yamada et al. 2018):
the forward pass sees ``forward_scale * x`` while the gradient flowing back to ``x`` is
``backward_scale * grad``. Both scales are drawn by the caller in the forward pass, from
torch's global generator, so two passes that start from the same RNG state (as SAM's ascent
and descent passes do) see identical values and produce identical gradients.
"""

import torch
from torch import Tensor


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
