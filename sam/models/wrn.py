"""WideResNet for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

Pre-activation basic blocks (BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3), three stages of
widths 16k, 32k, 64k with ``(depth - 4) / 6`` blocks each. WRN-28-10 has 36,479,194
parameters for 10 classes.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from sam.models.common import he_init


class WideBasicBlock(nn.Module):
    """Pre-activation basic block; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        # When the shape changes, the shortcut also starts from the pre-activated input.
        shortcut = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        o = F.dropout(o, p=self.dropout, training=self.training)
        o = self.conv2(o)
        return o + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs; ``dropout`` is applied inside blocks."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for stage, out_planes in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(WideBasicBlock(in_planes, out_planes, stride, dropout))
                in_planes = out_planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        o = self.blocks(self.conv1(x))
        o = F.relu(self.bn(o))
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)

