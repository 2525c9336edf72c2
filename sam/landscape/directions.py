"""Filter-normalized random directions (Li et al., "Visualizing the Loss Landscape of Neural
Nets", NeurIPS 2018, section 4).

A direction holds one tensor per trainable parameter. Its entries are drawn from N(0, 1)
and every filter is rescaled to the norm of the same filter of the weights:

    d_i <- d_i / ||d_i|| * ||w_i||

where a filter ``i`` is the slice along the first (output) dimension of a weight with two or
more dimensions: a convolution's ``W[i, :, :, :]``, a linear layer's row ``W[i, :]``. A step
of ``a`` along ``d`` then moves every filter by the fraction ``a`` of its own norm, so plots of
networks whose weights differ in scale (BatchNorm makes a network blind to it) compare.

Biases, BatchNorm's weight and bias, and every other parameter with fewer than two
dimensions or of a normalization layer get ``d = 0``: Li et al.'s ``ignore='biasbn'``
(tomgoldstein/loss-landscape, net_plotter.py), the setting of the paper's figures. The
BatchNorm running statistics are buffers, never moved: the network is evaluated in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Direction = list[Tensor]

# the layers whose parameters stay put (affine weight and bias of a normalization)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The model's ``(name, parameter)`` pairs with ``requires_grad``, in module order: the
    coordinates a direction has."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def fixed_parameters(model: nn.Module) -> list[bool]:
    """One flag per :func:`trainable` parameter: True where the direction is zero (a
    parameter with fewer than two dimensions, i.e. a bias or a normalization layer's affine
    parameter, or any parameter of a normalization layer)."""
    in_norm = {id(p) for mod in model.modules() if isinstance(mod, NORM_LAYERS)
               for p in mod.parameters(recurse=False)}
    return [p.dim() < 2 or id(p) in in_norm for _, p in trainable(model)]


def filter_normalize(direction: Direction, weights: list[Tensor],
                     fixed: list[bool]) -> Direction:
    """The direction with filter ``i`` of each tensor rescaled to ``||w_i|| / ||d_i||``
    (norms over all dimensions but the first) and the ``fixed`` tensors zeroed; a filter of
    ``d`` with norm 0 stays 0. Returns new tensors."""
    out = []
    for d, w, zero in zip(direction, weights, fixed, strict=True):
        if d.shape != w.shape:
            raise ValueError(f"direction of shape {tuple(d.shape)} for a weight of shape "
                             f"{tuple(w.shape)}")
        if zero:
            out.append(torch.zeros_like(w))
            continue
        d_norm = d.flatten(1).norm(dim=1)
        w_norm = w.detach().flatten(1).norm(dim=1).to(d.dtype)
        scale = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(torch.finfo(d.dtype).tiny),
                            torch.zeros_like(d_norm))
        out.append(d * scale.view(-1, *([1] * (d.dim() - 1))))
    return out


def random_direction(model: nn.Module, generator: torch.Generator) -> Direction:
    """A filter-normalized Gaussian direction for ``model``'s trainable parameters.

    The Gaussian entries are drawn on the CPU from ``generator`` in the parameters' dtype, one
    parameter after another, so a seed gives the same direction on every device and the
    same raw draw for two models of one architecture (SGD and SAM compared on one axis);
    the result lives on the parameters' devices."""
    params = [p for _, p in trainable(model)]
    raw = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
           for p in params]
    return filter_normalize(raw, [p.detach() for p in params], fixed_parameters(model))


def random_directions(model: nn.Module, count: int, seed: int) -> list[Direction]:
    """``count`` filter-normalized directions drawn one after the other from one generator
    seeded with ``seed`` (the global RNG is not used)."""
    gen = torch.Generator().manual_seed(seed)
    return [random_direction(model, gen) for _ in range(count)]
