"""ResNets for CIFAR (He et al. 2016, "Deep Residual Learning for Image Recognition").

- ``ResNet18``: the ImageNet ResNet-18 layout with a 3x3 stem and no max-pool, the common
  CIFAR variant (kuangliu/pytorch-cifar); 11,173,962 parameters for 10 classes.
- ``CifarResNet``: the paper's CIFAR family ResNet-(6n+2), three stages of 16/32/64 channels;
  ResNet-20 has 269,722 parameters with option-A (parameter-free) shortcuts.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from sam.models.common import he_init


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add shortcut, ReLU.

    ``shortcut`` picks the projection used when the shape changes: ``"A"`` subsamples and
    zero-pads the channels (no parameters), ``"B"`` uses a 1x1 conv + BN.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes - in_planes, stride)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(self.conv1(x)))
        o = self.bn2(self.conv2(o))
        return F.relu(o + self.shortcut(x))


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero-padding of the channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, four stages of two basic blocks (64/128/256/512 channels)."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks: list[nn.Module] = []
        in_planes = 64
        for stage, planes in enumerate([64, 128, 256, 512]):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut="B"))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)
        he_init(self, zero_linear_bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(self.conv1(x)))
        o = self.blocks(o)
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)


class CifarResNet(nn.Module):
    """ResNet-``depth`` (depth = 6n+2: 20, 32, 44, 56, 110) for CIFAR, 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int, shortcut: str = "A",
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate([16, 32, 64]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut=shortcut))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        he_init(self, zero_linear_bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(self.conv1(x)))
        o = self.blocks(o)
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)

