"""WideResNet for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

Pre-activation basic blocks (BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3), three stages of
widths 16k, 32k, 64k with ``(depth - 4) / 6`` blocks each, then BN-ReLU, global average pool
and a linear layer.

``style="pytorch"`` (default): a 1x1 conv shortcut, fed the pre-activated input, wherever the
shape changes; symmetric padding; PyTorch's linear init. WRN-28-10 has 36,479,194 parameters
for 10 classes.

``style="official"``: google-research/sam's ``sam_jax/models/wide_resnet.py``. Shortcuts
are parameter-free (average pool to the new stride, then zero channels appended); they
take the raw block input, except in the network's first block, whose shortcut (and
branch) start from the pre-activated input (``activate_before_residual``); strided convs
use flax 'SAME' padding (0 before, 1 after on even sizes); the final layer is
U(+-1/sqrt(num_classes)) with zero bias. The official model has no dropout (keep 0.0).
WRN-28-10 has 36,220,634 parameters for 10 classes, 36,278,324 for 100.

``norm="none"``: no normalization layer at all (the SAM paper's Figure 3 trains a WRN-40-10
"without batch norm" so that BatchNorm does not obscure the Hessian; neither the paper nor
google-research/sam say how it was built). What stands in for BatchNorm:

- every 3x3 conv has a bias (zero at init): BatchNorm's shift is gone, and a ReLU network
  without any bias before its activations can only place its kinks through the origin;
  the 1x1 shortcut convs stay bias-free (their bias would add to the branch's);
- the residual branch's last conv (``conv2``) starts at zero, so each block is the identity
  at init. With He init and no normalization a pre-activation block roughly doubles the
  variance of its input, 2^18 over WRN-40's 18 blocks; zero-initialised branches keep the
  initial network shallow and the logits O(1). This is Fixup's core rule (Zhang, Dauphin &
  Ma, ICLR 2019, who train exactly a WRN-40-10 on CIFAR-10 without normalization) and
  SkipInit's (De & Smith, NeurIPS 2020), without Fixup's scalar multipliers and biases.

WRN-40-10 without normalization has 55,828,298 parameters for 10 classes (pytorch style),
55,569,738 (official style); with BatchNorm 55,841,754 and 55,583,194.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from sam.models.common import (
    PoolPadShortcut,
    check_norm,
    check_style,
    conv3x3,
    he_init,
    norm2d,
    official_dense_init,
)


class WideBasicBlock(nn.Module):
    """Pre-activation basic block.

    ``preact_shortcut``: the shortcut starts from BN-ReLU(x) rather than x. ``style`` picks
    the shortcut for a shape change: a 1x1 conv ("pytorch") or pool + zero-pad ("official").
    ``norm="none"``: no BatchNorm (``bn1``/``bn2`` are identities) and biased 3x3 convs.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        dropout: float,
        style: str = "pytorch",
        preact_shortcut: bool | None = None,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        bias = norm == "none"
        self.bn1 = norm2d(in_planes, norm)
        self.conv1 = conv3x3(in_planes, out_planes, stride, style, bias)
        self.bn2 = norm2d(out_planes, norm)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=bias)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            if style == "official":
                self.shortcut = PoolPadShortcut(out_planes - in_planes, stride)
            else:
                self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        # Default (the pytorch style): pre-activated exactly when the shape changes.
        if preact_shortcut is None:
            preact_shortcut = self.shortcut is not None
        self.preact_shortcut = preact_shortcut

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        shortcut = o if self.preact_shortcut else x
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        o = F.dropout(o, p=self.dropout, training=self.training)
        o = self.conv2(o)
        return o + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (28x28 too) of ``in_channels``
    channels; ``dropout`` is applied inside blocks.

    ``style``: "pytorch" or "official" (google-research/sam); ``norm``: "batchnorm" or
    "none" (no normalization, biased convs, zero-initialised residual branches); see the
    module docstring.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        dropout: float = 0.0,
        style: str = "pytorch",
        in_channels: int = 3,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        check_style(style)
        check_norm(norm)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=norm == "none")
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for stage, out_planes in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                # Official: only the first block's shortcut is pre-activated, even as identity.
                preact = (stage == 0 and i == 0) if style == "official" else None
                blocks.append(
                    WideBasicBlock(in_planes, out_planes, stride, dropout, style, preact, norm)
                )
                in_planes = out_planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = norm2d(in_planes, norm)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)
        if style == "official":
            official_dense_init(self.fc)
        if norm == "none":
            _without_norm_init(self)

    def forward(self, x: Tensor) -> Tensor:
        o = self.blocks(self.conv1(x))
        o = F.relu(self.bn(o))
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)


def _without_norm_init(model: WideResNet) -> None:
    """Zero conv biases, and zero weights of each residual branch's last conv (identity
    blocks at init): the init of ``norm="none"`` (module docstring)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, WideBasicBlock):
            nn.init.zeros_(m.conv2.weight)
