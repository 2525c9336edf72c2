"""Layers and weight initialisation shared by the CIFAR networks.

Two styles of the same architectures: ``"pytorch"`` (the common PyTorch ports) and
``"official"`` (exactly google-research/sam's Flax models: flax 'SAME' padding on strided
convolutions, parameter-free shortcuts, its dense-layer init). See each model's docstring
for what the style changes there.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from sam.errors import UserError

STYLES = ("pytorch", "official")
# "none": no normalization layers at all (the SAM paper's Figure 3 WRN-40-10 "without batch
# norm"); the model says what stands in for them (wrn.py: conv biases, zero-init branches)
NORMS = ("batchnorm", "none")


def check_style(style: str) -> str:
    """Return ``style`` if it is one of ``STYLES``; raise ``UserError`` otherwise."""
    if style not in STYLES:
        raise UserError(f"unknown model style {style!r}: use one of {', '.join(STYLES)}")
    return style


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is one of ``NORMS``; raise ``UserError`` otherwise."""
    if norm not in NORMS:
        raise UserError(f"unknown model.norm {norm!r}: use one of {', '.join(NORMS)}")
    return norm


def norm2d(channels: int, norm: str) -> nn.Module:
    """``nn.BatchNorm2d(channels)`` for norm "batchnorm", ``nn.Identity()`` for "none"."""
    return nn.BatchNorm2d(channels) if norm == "batchnorm" else nn.Identity()


def he_init(model: nn.Module, zero_linear_bias: bool = True) -> None:
    """He-normal (fan_out, ReLU) convolutions, BatchNorm weight 1 and bias 0, and, when
    ``zero_linear_bias``, zero linear biases (linear weights keep PyTorch's default).

    The convolution init equals the official ``variance_scaling(2.0, 'fan_out', 'normal')``
    (untruncated normal, std sqrt(2 / (k * k * out_channels))).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and zero_linear_bias:
            nn.init.zeros_(m.bias)


def official_dense_init(fc: nn.Linear) -> None:
    """google-research/sam's final-layer init: weight ~ U(-s, s) with s = 1 / sqrt(num_classes)
    (the layer's fan_out, not PyTorch's fan_in), bias 0 (flax's default bias init)."""
    bound = fc.out_features**-0.5
    nn.init.uniform_(fc.weight, -bound, bound)
    nn.init.zeros_(fc.bias)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` (bias-free unless ``bias``) with TensorFlow/flax 'SAME' padding, worked
    out per call.

    Per spatial dim: out = ceil(size / stride), total = max((out - 1) * stride + k - size, 0),
    total // 2 zeros before and the rest after. A 3x3 stride-2 conv on an even size pads
    0 before and 1 after (PyTorch's padding=1 pads 1 and 1, sampling other pixels).
    """

    def __init__(
        self, in_planes: int, out_planes: int, kernel_size: int, stride: int, bias: bool = False
    ) -> None:
        super().__init__(in_planes, out_planes, kernel_size, stride, padding=0, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        # F.pad lists the last dim (width) first.
        dims = zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True)
        for size, k, s in dims:
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv3x3(
    in_planes: int, out_planes: int, stride: int, style: str, bias: bool = False
) -> nn.Conv2d:
    """3x3 conv, bias-free unless ``bias``. For stride 1 'SAME' is padding 1 on both sides in
    either style; strided convs get flax 'SAME' padding in the official style."""
    if style == "official" and stride != 1:
        return SameConv2d(in_planes, out_planes, 3, stride, bias)
    return nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=bias)


class PoolPadShortcut(nn.Module):
    """Parameter-free shortcut: ``stride`` x ``stride`` average pool (no padding, as flax's
    'VALID' ``avg_pool``), then ``extra_channels`` zero channels appended after the others."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"
