"""The 16 operations of the official SAM code's AutoAugment, batched over uint8 (N, 3, H, W),
and `level_to_arg`, which turns a policy's level into an operation's argument.

Ports of google-research/sam autoaugment/autoaugment.py (forked there from tensorflow/tpu's
EfficientNet AutoAugment); `sam.data.official_autoaugment` draws the policy and calls them.
Each takes a batch and a scalar argument or one per image, and returns a new uint8 batch;
`OPS` maps the official names to them. Checked against hand-worked values by
`python -m pytest tests/test_official_autoaugment.py -q`.

Official behaviours kept on purpose (they are what SAM trained with):
- Contrast blends toward the constant H*W/256 (the official averages the histogram's
  counts over its 256 bins), i.e. 4 on 32x32 images, not toward the mean grey level.
- Arithmetic is TF's float32 (grey = trunc(255.5 * sum w_c x_c / 255), blend/contrast
  results truncated, not rounded), so results can differ from PIL by one level.
- Posterize to 0 bits keeps the top bit: TF clamps the shift of 8 to 7.
- Geometric ops sample the nearest pixel (tfa's default interpolation, rounding halves
  away from zero, as std::round) and fill what falls outside with FILL = 128 (the
  official replace_value, autoaugment.py:568); so does Cutout.

Where this port cannot be bit-exact: float32 sums are taken left to right without FMA, as
TF's CPU kernels (the tf.data map runs on the host) without FMA do, but a TF build whose
grayscale matmul or 3x3 smoothing fuses multiply-adds, or a libm whose cos/sin differ by an
ulp, can move a value lying within an ulp of an integer (truncation) or of a half (nearest
sampling) by one; Solarize with threshold 256 (ImageNet policy, level 10) solarizes no
pixel here, whereas TF casts 256 to uint8 first (version-dependent).

Every operation is per image (no value crosses from one image to another), so running it
on a whole batch and keeping some rows equals running it on those rows alone; and none
reads a value back to the host, so on CUDA they queue without waiting for the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FILL = 128  # replace_value of build_and_apply_nas_policy (autoaugment.py:568)
TRANSLATE_CONST = 250  # HParams of distort_image_with_autoaugment (autoaugment.py:621)
CUTOUT_CONST = 100
_MAX_LEVEL = 10.0

# ---------------------------------------------------------------------------------------
# Colour operations: (N, 3, H, W) uint8 in, uint8 out; arguments a scalar or one per image
# ---------------------------------------------------------------------------------------


def _per_image(value: Tensor | float, images: Tensor, dtype: torch.dtype) -> Tensor:
    """`value` (a scalar or one value per image) as an (N, 1, 1, 1) tensor."""
    v = torch.as_tensor(value, dtype=dtype, device=images.device)
    return v.expand(images.shape[0]).view(-1, 1, 1, 1)


def _blend(degenerate: Tensor, images: Tensor, factor: Tensor | float) -> Tensor:
    """TF `blend`: degenerate + factor * (image - degenerate) in float32, clipped, truncated."""
    d = degenerate.float()
    f = _per_image(factor, images, torch.float32)
    return (d + f * (images.float() - d)).clamp_(0.0, 255.0).to(torch.uint8)


def _grayscale(images: Tensor) -> Tensor:
    """tf.image.rgb_to_grayscale on uint8: trunc(255.5 * sum_c w_c * (x_c * (1/255))), N1HW."""
    x = images.float() * torch.tensor(1.0 / 255, dtype=torch.float32)
    gray = x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.5870 + x[:, 2:3] * 0.1140  # float32, left to right
    return (gray * 255.5).to(torch.uint8)


def invert(images: Tensor) -> Tensor:
    return 255 - images


def solarize(images: Tensor, threshold: Tensor | float) -> Tensor:
    """Pixels >= threshold become 255 - pixel."""
    t = _per_image(threshold, images, torch.int64)
    return torch.where(images < t, images, 255 - images)


def solarize_add(images: Tensor, addition: Tensor | float, threshold: int = 128) -> Tensor:
    """Pixels < threshold get `addition` added, clipped to [0, 255]."""
    added = (images.long() + _per_image(addition, images, torch.int64)).clamp_(0, 255)
    return torch.where(images < threshold, added.to(torch.uint8), images)


def posterize(images: Tensor, bits: Tensor | float) -> Tensor:
    """Keep the top `bits` bits. TF clamps the shift 8 - bits to 7: 0 bits keeps one."""
    shift = (8 - _per_image(bits, images, torch.int64)).clamp_(0, 7).to(torch.uint8)
    return images.bitwise_right_shift(shift).bitwise_left_shift(shift)


def color(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend from the image's grey version (factor 0) to the image (factor 1) and beyond."""
    return _blend(_grayscale(images).expand_as(images), images, factor)


def contrast(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend from a constant image to the image. The official constant is sum(hist) / 256
    = H*W/256 (its histogram's counts averaged over the bins), not the mean grey level."""
    h, w = images.shape[-2:]
    mean = torch.full_like(images, min(h * w // 256, 255))  # float32 H*W/256 is exact
    return _blend(mean, images, factor)


def brightness(images: Tensor, factor: Tensor | float) -> Tensor:
    return _blend(torch.zeros_like(images), images, factor)


def sharpness(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend from the image smoothed by PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13
    (valid 3x3 window, truncated to uint8; the one-pixel border keeps the original)."""
    h, w = images.shape[-2:]
    if h < 3 or w < 3:  # TF: an empty valid convolution, so every pixel is border
        return _blend(images, images, factor)
    x = images.float()
    side, centre = torch.tensor([1.0, 5.0]) / 13  # float32 weights, as tf.constant(...) / 13.
    acc = None
    for r in range(3):  # taps in row-major order, one rounding per product and per sum
        for c in range(3):
            term = x[..., r:r + h - 2, c:c + w - 2] * (centre if (r, c) == (1, 1) else side)
            acc = term if acc is None else acc + term
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = acc.clamp_(0.0, 255.0).to(torch.uint8)
    return _blend(degenerate, images, factor)


def autocontrast(images: Tensor) -> Tensor:
    """Per image and channel, stretch [min, max] to [0, 255] (float32, truncated);
    a constant channel is left as is."""
    x = images.float()
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / torch.where(hi > lo, hi - lo, 1.0)
    offset = -lo * scale
    stretched = (x * scale + offset).clamp_(0.0, 255.0).to(torch.uint8)
    return torch.where(hi > lo, stretched, images)


def equalize(images: Tensor) -> Tensor:
    """PIL's Equalize per image and channel: step = (pixels - count of the top value) // 255,
    lut[v] = (pixels below v + step // 2) // step clipped to 255; step 0 leaves it as is."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).long()
    # histogram by scatter_add_ (exact on integers): bincount would read its maximum back
    # to the host on CUDA
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    top_count = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = (h * w - top_count) // 255
    below = hist.cumsum(dim=1) - hist  # pixels below each level
    lut = ((below + step // 2) // step.clamp(min=1)).clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.to(torch.uint8).view(n, c, h, w)


# ---------------------------------------------------------------------------------------
# Geometric operations and Cutout: fill grey 128
# ---------------------------------------------------------------------------------------


def _round_half_away(v: Tensor) -> Tensor:
    """std::round: halves away from zero (torch.round rounds them to even)."""
    t = v.trunc()
    return t + torch.where((v - t).abs() >= 0.5, v.sign(), 0.0)


def _transform(images: Tensor, a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> Tensor:
    """tfa.image.transform, NEAREST, through wrap/unwrap: output pixel (x, y) samples input
    (a0 x + a1 y + a2, b0 x + b1 y + b2) (float32, per-image coefficients of shape (N,)),
    rounded half away from zero; samples outside the image become FILL."""
    n, c, h, w = images.shape
    ys = torch.arange(h, device=images.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, w)

    def coord(k: tuple[Tensor, ...]) -> Tensor:
        k0, k1, k2 = (v.to(images.device, torch.float32).view(-1, 1, 1) for v in k)
        return _round_half_away(k0 * xs + k1 * ys + k2)

    ix, iy = coord(a), coord(b)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    src = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).long().view(n, 1, h * w)
    out = images.reshape(n, c, h * w).gather(2, src.expand(n, c, h * w)).view(n, c, h, w)
    return torch.where(inside.unsqueeze(1), out, FILL)


def rotate(images: Tensor, degrees: Tensor | float) -> Tensor:
    """tfa.image.rotate by `degrees` (positive: counter-clockwise on screen), about the centre."""
    deg = _per_image(degrees, images, torch.float32).view(-1)
    rad = deg * torch.tensor(math.pi / 180.0, dtype=torch.float32)
    cos, sin = torch.cos(rad), torch.sin(rad)
    hm1, wm1 = (float(s - 1) for s in images.shape[-2:])  # tfa: (height - 1), (width - 1)
    x_offset = (wm1 - (cos * wm1 - sin * hm1)) / 2.0
    y_offset = (hm1 - (sin * wm1 + cos * hm1)) / 2.0
    return _transform(images, (cos, -sin, x_offset), (sin, cos, y_offset))


def _constant(images: Tensor, value: float) -> Tensor:
    return torch.full((images.shape[0],), value, device=images.device)


def shear_x(images: Tensor, level: Tensor | float) -> Tensor:
    """Output (x, y) samples input (x + level * y, y)."""
    lv = _per_image(level, images, torch.float32).view(-1)
    one, zero = _constant(images, 1.0), _constant(images, 0.0)
    return _transform(images, (one, lv, zero), (zero, one, zero))


def shear_y(images: Tensor, level: Tensor | float) -> Tensor:
    """Output (x, y) samples input (x, level * x + y)."""
    lv = _per_image(level, images, torch.float32).view(-1)
    one, zero = _constant(images, 1.0), _constant(images, 0.0)
    return _transform(images, (one, zero, zero), (lv, one, zero))


def translate_x(images: Tensor, pixels: Tensor | float) -> Tensor:
    """Output (x, y) samples input (x + pixels, y): the content moves left by `pixels`."""
    px = _per_image(pixels, images, torch.float32).view(-1)
    one, zero = _constant(images, 1.0), _constant(images, 0.0)
    return _transform(images, (one, zero, px), (zero, one, zero))


def translate_y(images: Tensor, pixels: Tensor | float) -> Tensor:
    """Output (x, y) samples input (x, y + pixels): the content moves up by `pixels`."""
    px = _per_image(pixels, images, torch.float32).view(-1)
    one, zero = _constant(images, 1.0), _constant(images, 0.0)
    return _transform(images, (one, zero, zero), (zero, one, px))


def cutout(images: Tensor, pad_size: Tensor | float, center_y: Tensor | float,
           center_x: Tensor | float) -> Tensor:
    """Rows [cy - pad, cy + pad) x columns [cx - pad, cx + pad), clipped to the image,
    become FILL (the official draws the centre uniformly over the pixels)."""
    h, w = images.shape[-2:]
    pad = _per_image(pad_size, images, torch.int64).view(-1, 1, 1)
    cy = _per_image(center_y, images, torch.int64).view(-1, 1, 1)
    cx = _per_image(center_x, images, torch.int64).view(-1, 1, 1)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    box = (rows >= cy - pad) & (rows < cy + pad) & (cols >= cx - pad) & (cols < cx + pad)
    return torch.where(box.unsqueeze(1), FILL, images)


OPS = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate,
    "Posterize": posterize, "Solarize": solarize, "SolarizeAdd": solarize_add,
    "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Cutout": cutout,
}
NO_ARG_OPS = ("AutoContrast", "Equalize", "Invert")
SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # _randomly_negate_tensor

# ---------------------------------------------------------------------------------------
# Levels: a policy's level 0..10 -> the operation's argument
# ---------------------------------------------------------------------------------------


def level_to_arg(name: str, level: float, translate_const: float = TRANSLATE_CONST,
                 cutout_const: float = CUTOUT_CONST) -> float:
    """The official level_to_arg (autoaugment.py:437-492), before the random sign of the
    signed operations (Rotate, ShearX/Y, TranslateX/Y)."""
    lv = level / _MAX_LEVEL
    if name in NO_ARG_OPS:
        return 0.0
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return lv * 1.8 + 0.1
    table = {"Rotate": lv * 30.0, "ShearX": lv * 0.3, "ShearY": lv * 0.3,
             "TranslateX": lv * float(translate_const), "TranslateY": lv * float(translate_const),
             "Posterize": int(lv * 4), "Solarize": int(lv * 256), "SolarizeAdd": int(lv * 110),
             "Cutout": int(lv * cutout_const)}
    if name not in table:
        raise ValueError(f"unknown AutoAugment operation {name!r}: use one of {tuple(OPS)}")
    return float(table[name])
