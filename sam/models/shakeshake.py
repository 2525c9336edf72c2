"""Shake-Shake regularized ResNet for CIFAR (Gastaldi 2017, "Shake-Shake regularization").

Shake-Shake-26 2x96d: a 16-channel 3x3 stem, three stages of 4 residual blocks with two
ReLU-conv-BN-ReLU-conv-BN branches each (widths 96, 192, 384), then ReLU, global average
pool and a linear layer; 26.2M parameters for 10 classes. Training uses "Shake-Shake-Image":
per-sample U(0, 1) alpha mixes the branches on the forward pass and an independent per-sample
U(0, 1) beta on the backward pass. Both are drawn in the forward pass from torch's global
generator; evaluation uses 0.5.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.models.common import he_init
from sam.models.shake import per_sample_uniform, shake_scale


def _branch(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """One residual branch: ReLU-conv3x3-BN-ReLU-conv3x3-BN."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(),
        nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ShakeShortcut(nn.Module):
    """Shortcut for a shape change: ReLU, then two strided 1x1-conv paths (the second shifted
    by one pixel) each giving half the channels, concatenated and batch-normalized."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, out_planes // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_planes, out_planes - out_planes // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        path1 = F.avg_pool2d(x, 1, self.stride)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        path2 = F.avg_pool2d(shifted, 1, self.stride)
        return self.bn(torch.cat([self.conv1(path1), self.conv2(path2)], dim=1))


class ShakeBlock(nn.Module):
    """Two-branch residual block combined with Shake-Shake (forward alpha, backward beta)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.branch1 = _branch(in_planes, out_planes, stride)
        self.branch2 = _branch(in_planes, out_planes, stride)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = ShakeShortcut(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        b1, b2 = self.branch1(x), self.branch2(x)
        if self.training:
            alpha = per_sample_uniform(b1)
            beta = per_sample_uniform(b1)
            mixed = shake_scale(b1, alpha, beta) + shake_scale(b2, 1 - alpha, 1 - beta)
        else:
            mixed = 0.5 * (b1 + b2)
        return mixed + self.shortcut(x)


class ShakeShake(nn.Module):
    """Shake-Shake-``depth`` 2x``base_width``d for 32x32 inputs (depth = 6n+2)."""

    def __init__(self, depth: int, base_width: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ShakeShake depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for stage in range(3):
            out_planes = base_width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ShakeBlock(in_planes, out_planes, stride))
                in_planes = out_planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        o = self.blocks(self.bn1(self.conv1(x)))
        o = F.relu(o)
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)
