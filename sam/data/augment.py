"""Batched augmentation ops on image tensors: padded random crop + flip, and Cutout; and
the checks of the augment group's settings.

Each op is split into drawing its random parameters on a generator (`*_params`) and
applying them (`apply_*`), so a batch can be drawn whole and applied in parts. The crop
runs on uint8 images with one gather and never builds the padded image; the padding mode
is one of `PAD_MODES`. Cutout has two forms: one square per image (DeVries & Taylor's
definition) or one square position for the whole batch (the official SAM code's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sam.errors import UserError

AUGMENTS = ("none", "basic", "cutout", "autoaugment")
# How the 4-px crop pads: "reflect" mirrors the border (no edge repeat), as the official
# SAM code (tf.pad mode REFLECT); "zero" pads black, as torchvision's RandomCrop(32, 4).
PAD_MODES = ("reflect", "zero")
# Which AutoAugment: "official" = the official SAM code's policies and ops, batched on the
# device (sam.data.official_autoaugment); "torchvision" = v2.AutoAugment(CIFAR10) per image.
AA_POLICIES = ("official", "torchvision")


def check_pad_mode(pad_mode: str) -> str:
    """``pad_mode`` if it is one of PAD_MODES, else UserError naming the setting."""
    if pad_mode not in PAD_MODES:
        raise UserError(f"augment.pad_mode={pad_mode!r}: use one of {', '.join(PAD_MODES)}")
    return pad_mode


def check_policy(policy: str) -> str:
    """``policy`` if it is one of AA_POLICIES, else UserError naming the setting."""
    if policy not in AA_POLICIES:
        raise UserError(f"augment.policy={policy!r}: use {' or '.join(AA_POLICIES)}")
    return policy


def check_cutout_per_image(value: bool) -> bool:
    """``value`` if it is a bool, else UserError naming the setting."""
    if not isinstance(value, bool):
        raise UserError(f"augment.cutout_per_image={value!r}: use true (one square per "
                        "image) or false (one position for the whole batch, as the official "
                        "code)")
    return value


def crop_flip_params(
    n: int, generator: torch.Generator, padding: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw per-image (top, left, flip) for `apply_crop_flip` on `generator`'s device.

    top/left are crop offsets into the padded image, in [0, 2 * padding].
    """
    dev = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    return top, left, flip


def _reflect(i: Tensor, n: int) -> Tensor:
    """Indices in [-(n-1), 2n-2] mirrored into [0, n) without repeating the edge:
    -1 -> 1, n -> n - 2 (numpy's and torch's "reflect")."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def apply_crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int = 4,
                    pad_mode: str = "reflect") -> Tensor:
    """Pad `x` (N, C, H, W) by `padding` (`pad_mode`: "reflect" or "zero"), crop H x W at
    (top, left) of the padded image, mirror where `flip`.

    Batched with one gather from `x` itself (the padded image is never built); run it on
    uint8 images, so that zero padding is black.
    """
    n, c, h, w = x.shape
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than it, got {h}x{w}")
    check_pad_mode(pad_mode)
    rows = top[:, None] + torch.arange(h, device=x.device) - padding  # (N, H), in x's frame
    cols = left[:, None] + torch.arange(w, device=x.device) - padding  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if pad_mode == "reflect":
        src_rows, src_cols = _reflect(rows, h), _reflect(cols, w)
    else:
        src_rows, src_cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = x[batch, chan, src_rows[:, None, :, None], src_cols[:, None, None, :]]
    if pad_mode == "zero":
        outside_rows = ((rows < 0) | (rows >= h))[:, None, :, None]
        outside_cols = ((cols < 0) | (cols >= w))[:, None, None, :]
        out = out.masked_fill(outside_rows | outside_cols, 0)
    return out


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4,
                     pad_mode: str = "reflect", flip: bool = True) -> Tensor:
    """Random `padding`-px padded crop + horizontal flip of each image in `x` (N, C, H, W);
    `flip=False`: the crop alone (the flips are still drawn, so the draws stay the same)."""
    top, left, flips = crop_flip_params(len(x), generator, padding)
    if not flip:
        flips = torch.zeros_like(flips)
    return apply_crop_flip(x, top, left, flips, padding=padding, pad_mode=pad_mode)


def cutout_params(n: int, h: int, w: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw n Cutout centres (row, col), uniform over the H x W pixels: one per image, or
    n = 1 for one centre of a whole batch (the official code's, augmentation.py:105-110)."""
    dev = generator.device
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    return cy, cx


def apply_cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int = 16) -> Tensor:
    """Zero a size x size square centred at (cy, cx) in each image, clipped at the borders.

    Rows cy - size//2 .. cy + size//2 - 1 (and the same for columns), as in DeVries &
    Taylor's reference code and the official SAM code ([max(0, c - 8), min(H, c + 8)) for
    size 16). cy, cx hold one centre per image, or a single one (shape (1,)) for all.
    """
    h, w = x.shape[-2:]
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    half = size // 2
    in_rows = (ar_h >= cy[:, None] - half) & (ar_h < cy[:, None] + size - half)  # (N, H)
    in_cols = (ar_w >= cx[:, None] - half) & (ar_w < cx[:, None] + size - half)  # (N, W)
    box = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(box, 0)
