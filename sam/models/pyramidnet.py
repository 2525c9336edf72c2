"""PyramidNet for CIFAR (Han et al. 2017, "Deep Pyramidal Residual Networks"), with optional
ShakeDrop (Yamada et al. 2018, "ShakeDrop Regularization for Deep Residual Learning").

The width grows by ``alpha / N`` channels per block over all N blocks (three stages of
(depth - 2) / 9 bottleneck or (depth - 2) / 6 basic blocks); shortcuts are identity (average
pool when strided) with zero-padded extra channels. PyramidNet-272 (alpha 200, bottleneck)
has 26,210,842 parameters for 10 classes (the paper rounds to 26.0M).

ShakeDrop scales the residual branch by ``b + alpha - b * alpha`` on the forward pass and
``b + beta - b * beta`` on the backward pass, with b ~ Bernoulli(1 - p_l), alpha ~ U(-1, 1) and
beta ~ U(0, 1) drawn per sample (as in google-research/sam), all in the forward pass from
torch's global generator. The drop probability p_l grows linearly to 0.5 at the last block;
evaluation scales the branch by its expectation, 1 - p_l. Inside
``sam.models.true_gradient`` (the official SAM ascent pass) the backward factor is the
forward one.

``style="official"`` (google-research/sam, ``sam_jax/models/pyramidnet.py``, which always
has ShakeDrop and bottlenecks): strided 3x3 convs use flax 'SAME' padding (0 before, 1
after on even sizes) and the final layer is U(+-1/sqrt(num_classes)) with zero bias;
otherwise identical, with the same parameter count.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from sam.models.common import check_style, conv3x3, he_init, official_dense_init
from sam.models.shake import ShakeModule, per_sample_uniform, shake_scale


class ShakeDrop(ShakeModule):
    """ShakeDrop on a residual branch with drop probability ``p_drop``; under
    ``true_gradient`` the gradient uses the forward factor (beta is drawn all the same)."""

    def __init__(self, p_drop: float) -> None:
        super().__init__()
        self.p_drop = p_drop

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return (1 - self.p_drop) * x
        gate = (per_sample_uniform(x) >= self.p_drop).to(x.dtype)  # 1 keeps the branch as is
        alpha = per_sample_uniform(x, -1.0, 1.0)
        beta = per_sample_uniform(x, 0.0, 1.0)  # drawn either way: the RNG stream stays aligned
        forward = gate + alpha - gate * alpha
        if self.true_gradient:  # official x * rand_forward (sam_jax/models/utils.py:178-180)
            return x * (forward + 0 * beta)  # exactly forward; see ShakeModule on why
        return shake_scale(x, forward, gate + beta - gate * beta)

    def extra_repr(self) -> str:
        return f"p_drop={self.p_drop:.4f}"


class PyramidBlock(nn.Module):
    """Pyramidal residual block: BN-conv-...-BN with no final ReLU, optional ShakeDrop.

    Bottleneck: BN-1x1-BN-ReLU-3x3-BN-ReLU-1x1(x4)-BN; basic: BN-3x3-BN-ReLU-3x3-BN.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        bottleneck: bool,
        p_drop: float | None,
        style: str = "pytorch",
    ) -> None:
        super().__init__()
        self.out_planes = planes * (4 if bottleneck else 1)
        layers: list[nn.Module] = [nn.BatchNorm2d(in_planes)]
        if bottleneck:
            layers += [
                nn.Conv2d(in_planes, planes, 1, bias=False),
                nn.BatchNorm2d(planes),
                nn.ReLU(),
                conv3x3(planes, planes, stride, style),
                nn.BatchNorm2d(planes),
                nn.ReLU(),
                nn.Conv2d(planes, self.out_planes, 1, bias=False),
            ]
        else:
            layers += [
                conv3x3(in_planes, planes, stride, style),
                nn.BatchNorm2d(planes),
                nn.ReLU(),
                nn.Conv2d(planes, planes, 3, 1, 1, bias=False),
            ]
        layers.append(nn.BatchNorm2d(self.out_planes))
        self.branch = nn.Sequential(*layers)
        self.shakedrop = ShakeDrop(p_drop) if p_drop is not None else nn.Identity()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        o = self.shakedrop(self.branch(x))
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride != 1 else x
        extra = o.shape[1] - shortcut.shape[1]
        if extra > 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra))
        return o + shortcut


class PyramidNet(nn.Module):
    """PyramidNet-``depth`` with widening factor ``alpha`` for 32x32 inputs.

    ``shakedrop=True`` adds ShakeDrop to every block with drop probability rising linearly
    from 0.5 / N at the first block to 0.5 at the last. ``style``: "pytorch" or "official"
    (google-research/sam), see the module docstring.
    """

    def __init__(
        self,
        depth: int,
        alpha: int,
        num_classes: int,
        bottleneck: bool = True,
        shakedrop: bool = False,
        style: str = "pytorch",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_style(style)
        per_block = 9 if bottleneck else 6
        if (depth - 2) % per_block != 0:
            raise ValueError(f"PyramidNet depth must be {per_block}n+2, got {depth}")
        n = (depth - 2) // per_block
        num_blocks = 3 * n
        add_rate = alpha / num_blocks

        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[PyramidBlock] = []
        in_planes, width = 16, 16.0
        for i in range(num_blocks):
            width += add_rate
            stride = 2 if i in (n, 2 * n) else 1
            p_drop = 0.5 * (i + 1) / num_blocks if shakedrop else None
            block = PyramidBlock(in_planes, round(width), stride, bottleneck, p_drop, style)
            blocks.append(block)
            in_planes = block.out_planes
        self.blocks = nn.Sequential(*blocks)
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)
        if style == "official":
            official_dense_init(self.fc)

    def forward(self, x: Tensor) -> Tensor:
        o = self.blocks(self.bn1(self.conv1(x)))
        o = F.relu(self.bn_final(o))
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)
