"""The official SAM code's AutoAugment policy, batched over uint8 images (N, 3, H, W) on any device.

Checked by `python -m pytest tests/test_official_autoaugment.py -q`. Usage:

    gen = torch.Generator(device=images.device).manual_seed(seed)
    images = official_autoaugment(images, gen)            # the CIFAR policy

A port of google-research/sam autoaugment/autoaugment.py and autoaugment/policies.py
(forked from tensorflow/tpu's EfficientNet AutoAugment); the operations are in
`sam.data.official_aa_ops` (re-exported here). The official CIFAR pipeline runs
`distort_image_with_autoaugment(image, "cifar")` on each raw uint8 image, then flip +
reflect-pad-4 crop, batch, normalise and (batch-level "cutout") one 16x16 zero patch per
batch (sam_jax/datasets/dataset_source.py:89-92, 98-99, 124-126; augmentation.py:50-56,
100-136). This module is the first step; `sam.data.DeviceLoader(augment="autoaugment")`
runs the whole pipeline on the device.

Per image: one sub-policy of the table drawn uniformly; its two operations run in order,
each with its probability; an operation's level (0..10) becomes its argument as in the
official `level_to_arg`, with HParams(cutout_const=100, translate_const=250) and fill grey
128 (autoaugment.py:470-492, 568, 621); Rotate/Shear/Translate arguments are negated with
probability 1/2. The constants were sized for ImageNet: on 32x32 images a TranslateX/Y of
level >= 2 (>= 50 px) turns the image grey 128, and so does a Cutout of level 4 (pad 40:
an 80x80 square). A Cutout of level 3 (pad 30: rows and columns [c - 30, c + 30) around
its centre c, clipped to the image) greys the whole image unless c falls on row or column
0, 1 or 31: then up to two border rows and/or columns survive (rows 30-31 for a centre
row 0, row 31 for 1, row 0 for 31; columns alike); 183 of the 1,024 centres leave pixels,
at most 124 (centre (0, 0)), as in the official cutout (autoaugment.py:111-126). Kept on
purpose, as SAM trained with them.

A slot is applied grouped (images sorted by the operation they drew, each operation run
once on its group; least work, one host read per slot) or dense (each operation of the
slot run on the whole batch, each image keeping its own; no host read, so a CUDA stream
never waits): the same result bit for bit. The default is dense on CUDA only.

Random numbers come from `generator`, not TF's streams (an operation applies when
u < prob, TF when floor(u + prob) is 1: the same law up to float32 rounding of u + prob).
They are drawn on `generator.device`, then moved to the images' device: a CPU generator
driving CUDA images gives the CPU's results; CPU and CUDA generators differ.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from sam.data.official_aa_ops import (
    CUTOUT_CONST,
    FILL,
    NO_ARG_OPS,
    OPS,
    SIGNED_OPS,
    TRANSLATE_CONST,
    autocontrast,
    brightness,
    color,
    contrast,
    cutout,
    equalize,
    invert,
    level_to_arg,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    solarize_add,
    translate_x,
    translate_y,
)

__all__ = [
    "CUTOUT_CONST", "FILL", "OPS", "POLICIES", "POLICY_CIFAR", "POLICY_IMAGENET",
    "POLICY_SVHN", "TRANSLATE_CONST", "autocontrast", "brightness", "color", "contrast",
    "cutout", "equalize", "invert", "level_to_arg", "official_autoaugment", "posterize",
    "rotate", "sharpness", "shear_x", "shear_y", "solarize", "solarize_add", "translate_x",
    "translate_y",
]

SubPolicy = Sequence[tuple[str, float, float]]

_OP_NAMES = tuple(OPS)

# ---------------------------------------------------------------------------------------
# Policy tables: autoaugment/policies.py, entry for entry (name, probability, level)
# ---------------------------------------------------------------------------------------

POLICY_CIFAR: list[list[tuple[str, float, int]]] = [
    # exp0_0
    [("Invert", 0.1, 7), ("Contrast", 0.2, 6)],
    [("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)],
    [("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)],
    [("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)],
    # exp0_1
    [("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)],
    [("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)],
    [("Equalize", 0.8, 8), ("Invert", 0.1, 3)],
    [("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)],
    # exp0_2
    [("Solarize", 0.4, 5), ("AutoContrast", 0.0, 2)],
    [("TranslateY", 0.7, 9), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.9, 0), ("Solarize", 0.4, 3)],
    [("Equalize", 0.7, 5), ("Invert", 0.1, 3)],
    [("TranslateY", 0.7, 9), ("TranslateY", 0.7, 9)],
    # exp0_3
    [("Solarize", 0.4, 5), ("AutoContrast", 0.9, 1)],
    [("TranslateY", 0.8, 9), ("TranslateY", 0.9, 9)],
    [("AutoContrast", 0.8, 0), ("TranslateY", 0.7, 9)],
    [("TranslateY", 0.2, 7), ("Color", 0.9, 6)],
    [("Equalize", 0.7, 6), ("Color", 0.4, 9)],
    # exp1_0
    [("ShearY", 0.2, 7), ("Posterize", 0.3, 7)],
    [("Color", 0.4, 3), ("Brightness", 0.6, 7)],
    [("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)],
    [("Equalize", 0.6, 5), ("Equalize", 0.5, 1)],
    [("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)],
    # exp1_1
    [("Brightness", 0.3, 7), ("AutoContrast", 0.5, 8)],
    [("AutoContrast", 0.9, 4), ("AutoContrast", 0.5, 6)],
    [("Solarize", 0.3, 5), ("Equalize", 0.6, 5)],
    [("TranslateY", 0.2, 4), ("Sharpness", 0.3, 3)],
    [("Brightness", 0.0, 8), ("Color", 0.8, 8)],
    # exp1_2
    [("Solarize", 0.2, 6), ("Color", 0.8, 6)],
    [("Solarize", 0.2, 6), ("AutoContrast", 0.8, 1)],
    [("Solarize", 0.4, 1), ("Equalize", 0.6, 5)],
    [("Brightness", 0.0, 0), ("Solarize", 0.5, 2)],
    [("AutoContrast", 0.9, 5), ("Brightness", 0.5, 3)],
    # exp1_3
    [("Contrast", 0.7, 5), ("Brightness", 0.0, 2)],
    [("Solarize", 0.2, 8), ("Solarize", 0.1, 5)],
    [("Contrast", 0.5, 1), ("TranslateY", 0.2, 9)],
    [("AutoContrast", 0.6, 5), ("TranslateY", 0.0, 9)],
    [("AutoContrast", 0.9, 4), ("Equalize", 0.8, 4)],
    # exp1_4
    [("Brightness", 0.0, 7), ("Equalize", 0.4, 7)],
    [("Solarize", 0.2, 5), ("Equalize", 0.7, 5)],
    [("Equalize", 0.6, 8), ("Color", 0.6, 2)],
    [("Color", 0.3, 7), ("Color", 0.2, 4)],
    [("AutoContrast", 0.5, 2), ("Solarize", 0.7, 2)],
    # exp1_5
    [("AutoContrast", 0.2, 0), ("Equalize", 0.1, 0)],
    [("ShearY", 0.6, 5), ("Equalize", 0.6, 5)],
    [("Brightness", 0.9, 3), ("AutoContrast", 0.4, 1)],
    [("Equalize", 0.8, 8), ("Equalize", 0.7, 7)],
    [("Equalize", 0.7, 7), ("Solarize", 0.5, 0)],
    # exp1_6
    [("Equalize", 0.8, 4), ("TranslateY", 0.8, 9)],
    [("TranslateY", 0.8, 9), ("TranslateY", 0.6, 9)],
    [("TranslateY", 0.9, 0), ("TranslateY", 0.5, 9)],
    [("AutoContrast", 0.5, 3), ("Solarize", 0.3, 4)],
    [("Solarize", 0.5, 3), ("Equalize", 0.4, 4)],
    # exp2_0
    [("Color", 0.7, 7), ("TranslateX", 0.5, 8)],
    [("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)],
    [("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)],
    [("Brightness", 0.9, 6), ("Color", 0.2, 8)],
    [("Solarize", 0.5, 2), ("Invert", 0.0, 3)],
    # exp2_1
    [("AutoContrast", 0.1, 5), ("Brightness", 0.0, 0)],
    [("Cutout", 0.2, 4), ("Equalize", 0.1, 1)],
    [("Equalize", 0.7, 7), ("AutoContrast", 0.6, 4)],
    [("Color", 0.1, 8), ("ShearY", 0.2, 3)],
    [("ShearY", 0.4, 2), ("Rotate", 0.7, 0)],
    # exp2_2
    [("ShearY", 0.1, 3), ("AutoContrast", 0.9, 5)],
    [("TranslateY", 0.3, 6), ("Cutout", 0.3, 3)],
    [("Equalize", 0.5, 0), ("Solarize", 0.6, 6)],
    [("AutoContrast", 0.3, 5), ("Rotate", 0.2, 7)],
    [("Equalize", 0.8, 2), ("Invert", 0.4, 0)],
    # exp2_3
    [("Equalize", 0.9, 5), ("Color", 0.7, 0)],
    [("Equalize", 0.1, 1), ("ShearY", 0.1, 3)],
    [("AutoContrast", 0.7, 3), ("Equalize", 0.7, 0)],
    [("Brightness", 0.5, 1), ("Contrast", 0.1, 7)],
    [("Contrast", 0.1, 4), ("Solarize", 0.6, 5)],
    # exp2_4
    [("Solarize", 0.2, 3), ("ShearX", 0.0, 0)],
    [("TranslateX", 0.3, 0), ("TranslateX", 0.6, 0)],
    [("Equalize", 0.5, 9), ("TranslateY", 0.6, 7)],
    [("ShearX", 0.1, 0), ("Sharpness", 0.5, 1)],
    [("Equalize", 0.8, 6), ("Invert", 0.3, 6)],
    # exp2_5
    [("AutoContrast", 0.3, 9), ("Cutout", 0.5, 3)],
    [("ShearX", 0.4, 4), ("AutoContrast", 0.9, 2)],
    [("ShearX", 0.0, 3), ("Posterize", 0.0, 3)],
    [("Solarize", 0.4, 3), ("Color", 0.2, 4)],
    [("Equalize", 0.1, 4), ("Equalize", 0.7, 6)],
    # exp2_6
    [("Equalize", 0.3, 8), ("AutoContrast", 0.4, 3)],
    [("Solarize", 0.6, 4), ("AutoContrast", 0.7, 6)],
    [("AutoContrast", 0.2, 9), ("Brightness", 0.4, 8)],
    [("Equalize", 0.1, 0), ("Equalize", 0.0, 6)],
    [("Equalize", 0.8, 4), ("Equalize", 0.0, 4)],
    # exp2_7
    [("Equalize", 0.5, 5), ("AutoContrast", 0.1, 2)],
    [("Solarize", 0.5, 5), ("AutoContrast", 0.9, 5)],
    [("AutoContrast", 0.6, 1), ("AutoContrast", 0.7, 8)],
    [("Equalize", 0.2, 0), ("AutoContrast", 0.1, 2)],
    [("Equalize", 0.6, 9), ("Equalize", 0.4, 4)],
]

POLICY_IMAGENET: list[list[tuple[str, float, int]]] = [
    [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)],
    [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
    [("Color", 0.4, 1), ("Rotate", 0.6, 8)],
    [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
    [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)],
    [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
    [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)],
    [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
    [("Color", 0.6, 1), ("Equalize", 1.0, 2)],
    [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
    [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)],
    [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
    [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)],
    [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
    [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)],
    [("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)],
    [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)],
    [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
    [("Color", 1.0, 0), ("Rotate", 0.6, 2)],
    [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
    [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)],
    [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
    [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)],
    [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
    [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
]

POLICY_SVHN: list[list[tuple[str, float, int]]] = [
    [("ShearX", 0.9, 4), ("Invert", 0.2, 3)],
    [("ShearY", 0.9, 8), ("Invert", 0.7, 5)],
    [("Equalize", 0.6, 5), ("Solarize", 0.6, 6)],
    [("Invert", 0.9, 3), ("Equalize", 0.6, 3)],
    [("Equalize", 0.6, 1), ("Rotate", 0.9, 3)],
    [("ShearX", 0.9, 4), ("AutoContrast", 0.8, 3)],
    [("ShearY", 0.9, 8), ("Invert", 0.4, 5)],
    [("ShearY", 0.9, 5), ("Solarize", 0.2, 6)],
    [("Invert", 0.9, 6), ("AutoContrast", 0.8, 1)],
    [("Equalize", 0.6, 3), ("Rotate", 0.9, 3)],
    [("ShearX", 0.9, 4), ("Solarize", 0.3, 3)],
    [("ShearY", 0.8, 8), ("Invert", 0.7, 4)],
    [("Equalize", 0.9, 5), ("TranslateY", 0.6, 6)],
    [("Invert", 0.9, 4), ("Equalize", 0.6, 7)],
    [("Contrast", 0.3, 3), ("Rotate", 0.8, 4)],
    [("Invert", 0.8, 5), ("TranslateY", 0.0, 2)],
    [("ShearY", 0.7, 6), ("Solarize", 0.4, 8)],
    [("Invert", 0.6, 4), ("Rotate", 0.8, 4)],
    [("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)],
    [("ShearX", 0.1, 6), ("Invert", 0.6, 5)],
    [("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)],
    [("ShearY", 0.8, 4), ("Invert", 0.8, 8)],
    [("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)],
    [("ShearY", 0.8, 5), ("AutoContrast", 0.7, 3)],
    [("ShearX", 0.7, 2), ("Invert", 0.1, 5)],
]

POLICIES = {"cifar": POLICY_CIFAR, "imagenet": POLICY_IMAGENET, "svhn": POLICY_SVHN}

# ---------------------------------------------------------------------------------------
# The policy applied to a batch
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _tables(policy: tuple, translate_const: float, cutout_const: float,
            device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(P, 2) operation ids, probabilities, unsigned arguments, and is-signed flags."""
    ops = [[_OP_NAMES.index(name) for name, _, _ in sub] for sub in policy]
    probs = [[p for _, p, _ in sub] for sub in policy]
    args = [[level_to_arg(name, lv, translate_const, cutout_const) for name, _, lv in sub]
            for sub in policy]
    signed = [[name in SIGNED_OPS for name, _, _ in sub] for sub in policy]
    return (torch.tensor(ops, device=device), torch.tensor(probs, device=device),
            torch.tensor(args, device=device), torch.tensor(signed, device=device))


def _resolve(policy: str | Sequence[SubPolicy]) -> tuple:
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}: use one of "
                             f"{sorted(POLICIES)} or a list of sub-policies")
        policy = POLICIES[policy]
    subs = tuple(tuple((str(n), float(p), float(lv)) for n, p, lv in sub) for sub in policy)
    if not subs or any(len(sub) != len(subs[0]) for sub in subs):
        raise ValueError("AutoAugment policy: give a non-empty list of sub-policies, "
                         "all with the same number of operations")
    return subs


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"official_autoaugment takes uint8 (N, 3, H, W) images, got "
                         f"{images.dtype} {tuple(images.shape)}: convert before augmenting")


def _apply_op(name: str, x: Tensor, arg: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    if name == "Cutout":
        return cutout(x, arg, cy, cx)
    return OPS[name](x) if name in NO_ARG_OPS else OPS[name](x, arg)


def _grouped_slot(x: Tensor, key: Tensor, arg: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    """Each operation once, on the images whose `key` names it (sorting groups them)."""
    out = x.clone()
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=len(_OP_NAMES) + 1).tolist()  # the one host read
    for name, idx in zip(_OP_NAMES, order.split(counts), strict=False):
        if idx.numel():
            out[idx] = _apply_op(name, x[idx], arg[idx], cy[idx], cx[idx])
    return out


@functools.lru_cache(maxsize=64)
def _slot_names(policy: tuple, slot: int) -> tuple[str, ...]:
    """The operations that sub-policies of `policy` hold in `slot`, in `OPS` order."""
    return tuple(name for name in _OP_NAMES if any(sub[slot][0] == name for sub in policy))


def _dense_slot(x: Tensor, key: Tensor, arg: Tensor, cy: Tensor, cx: Tensor,
                names: Sequence[str]) -> Tensor:
    """Each operation in `names` on the whole batch; an image keeps the result of the one
    its `key` names (the others' arguments may be out of range for it: discarded)."""
    out = x
    for name in names:
        chosen = (key == _OP_NAMES.index(name)).view(-1, 1, 1, 1)
        out = torch.where(chosen, _apply_op(name, x, arg, cy, cx), out)
    return out


def official_autoaugment(images: Tensor, generator: torch.Generator, *,
                         policy: str | Sequence[SubPolicy] = "cifar",
                         translate_const: float = TRANSLATE_CONST,
                         cutout_const: float = CUTOUT_CONST,
                         dense: bool | None = None) -> Tensor:
    """The official AutoAugment on uint8 (N, 3, H, W) images; returns a new uint8 tensor.

    Args:
        images: uint8 (N, 3, H, W), any device.
        generator: the only source of randomness. Per call it draws, on its own device,
            N sub-policy indices, then (N, k) apply uniforms, (N, k) sign uniforms and
            (N, k) Cutout centre rows and columns (k operations per sub-policy): a fixed
            amount for given N, H, W. The draws then move to the images' device.
        policy: "cifar" (the official CIFAR pipeline's), "imagenet", "svhn", or a list of
            sub-policies [(name, probability, level), ...].
        translate_const, cutout_const: the official HParams (250, 100).
        dense: run every operation of a slot on the whole batch (no host read) rather than
            each on its group of images; None = dense on CUDA. Same result either way.
    """
    _check_images(images)
    subs = _resolve(policy)
    n, _, h, w = images.shape
    dev = images.device
    ops, probs, args, signed = _tables(subs, float(translate_const), float(cutout_const), dev)
    k = len(subs[0])
    g, gdev = generator, generator.device
    pick = torch.randint(len(subs), (n,), generator=g, device=gdev).to(dev)
    apply_u = torch.rand((n, k), generator=g, device=gdev).to(dev)
    sign_u = torch.rand((n, k), generator=g, device=gdev).to(dev)
    cy = torch.randint(h, (n, k), generator=g, device=gdev).to(dev)
    cx = torch.randint(w, (n, k), generator=g, device=gdev).to(dev)
    dense = dev.type == "cuda" if dense is None else dense

    out = images
    for slot in range(k):  # the second operation sees the first one's output
        # "Skip" is the extra id len(_OP_NAMES)
        key = torch.where(apply_u[:, slot] < probs[pick, slot], ops[pick, slot], len(_OP_NAMES))
        arg = args[pick, slot] * torch.where(signed[pick, slot] & (sign_u[:, slot] < 0.5),
                                             -1.0, 1.0)
        if dense:
            out = _dense_slot(out, key, arg, cy[:, slot], cx[:, slot], _slot_names(subs, slot))
        else:
            out = _grouped_slot(out, key, arg, cy[:, slot], cx[:, slot])
    return out.clone() if out is images else out
