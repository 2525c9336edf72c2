"""Shake-Shake regularized ResNet for CIFAR (Gastaldi 2017, "Shake-Shake regularization").

Shake-Shake-26 2x96d: a 16-channel 3x3 stem, three stages of 4 residual blocks with two
ReLU-conv-BN-ReLU-conv-BN branches each (widths 96, 192, 384), then ReLU, global average
pool and a linear layer; 26.2M parameters for 10 classes. Training uses "Shake-Shake-Image":
per-sample U(0, 1) alpha mixes the branches on the forward pass and an independent per-sample
U(0, 1) beta on the backward pass. Both are drawn in the forward pass from torch's global
generator; evaluation uses 0.5. Inside ``sam.models.true_gradient`` (the official SAM
ascent pass) the backward pass uses alpha too.

``style="official"`` (google-research/sam, ``sam_jax/models/wide_resnet_shakeshake.py``):
the shortcut for a shape change takes the raw input (no ReLU before its 1x1 paths),
strided convs use flax 'SAME' padding (0 before, 1 after on even sizes) and the final
layer is U(+-1/sqrt(num_classes)) with zero bias. Same parameter count as "pytorch".
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.models.common import check_style, conv3x3, he_init, official_dense_init
from sam.models.shake import ShakeModule, per_sample_uniform, shake_scale


def _branch(in_planes: int, out_planes: int, stride: int, style: str) -> nn.Sequential:
    """One residual branch: ReLU-conv3x3-BN-ReLU-conv3x3-BN."""
    return nn.Sequential(
        nn.ReLU(),
        conv3x3(in_planes, out_planes, stride, style),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(),
        nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ShakeShortcut(nn.Module):
    """Shortcut for a shape change: ReLU (if ``relu``), then two strided 1x1-conv paths (the
    second shifted by one pixel) each giving half the channels, concatenated and
    batch-normalized. The official model has no ReLU here."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, relu: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.relu = relu
        self.conv1 = nn.Conv2d(in_planes, out_planes // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_planes, out_planes - out_planes // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        if self.relu:
            x = F.relu(x)
        path1 = F.avg_pool2d(x, 1, self.stride)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        path2 = F.avg_pool2d(shifted, 1, self.stride)
        return self.bn(torch.cat([self.conv1(path1), self.conv2(path2)], dim=1))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, relu={self.relu}"


class ShakeBlock(ShakeModule):
    """Two-branch residual block combined with Shake-Shake (forward alpha, backward beta);
    under ``true_gradient`` the gradient also uses alpha (beta is drawn all the same)."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, style: str = "pytorch"
    ) -> None:
        super().__init__()
        self.branch1 = _branch(in_planes, out_planes, stride, style)
        self.branch2 = _branch(in_planes, out_planes, stride, style)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            relu = style != "official"
            self.shortcut = ShakeShortcut(in_planes, out_planes, stride, relu)

    def forward(self, x: Tensor) -> Tensor:
        b1, b2 = self.branch1(x), self.branch2(x)
        if self.training:
            alpha = per_sample_uniform(b1)
            beta = per_sample_uniform(b1)  # drawn either way: the RNG stream stays aligned
            if self.true_gradient:  # official x_forward (sam_jax/models/utils.py:110-112)
                alpha = alpha + 0 * beta  # exactly alpha; see ShakeModule on why beta is used
                mixed = alpha * b1 + (1 - alpha) * b2
            else:
                mixed = shake_scale(b1, alpha, beta) + shake_scale(b2, 1 - alpha, 1 - beta)
        else:
            mixed = 0.5 * (b1 + b2)
        return mixed + self.shortcut(x)


class ShakeShake(nn.Module):
    """Shake-Shake-``depth`` 2x``base_width``d for 32x32 inputs (28x28 too) of ``in_channels``
    channels (depth = 6n+2).

    ``style``: "pytorch" or "official" (google-research/sam), see the module docstring.
    """

    def __init__(
        self, depth: int, base_width: int, num_classes: int, style: str = "pytorch",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_style(style)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ShakeShake depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for stage in range(3):
            out_planes = base_width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ShakeBlock(in_planes, out_planes, stride, style))
                in_planes = out_planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)
        if style == "official":
            official_dense_init(self.fc)

    def forward(self, x: Tensor) -> Tensor:
        o = self.blocks(self.bn1(self.conv1(x)))
        o = F.relu(o)
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)
