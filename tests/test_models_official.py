"""``style="official"``: google-research/sam's architectures, checked piece by piece.

Parameter counts are derived by hand from sam_jax/models/wide_resnet.py and counted on the
meta device (no memory, no forward); everything that runs uses widths of a few channels.
"""

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sam.errors import UserError
from sam.models import MODELS, STYLES, PyramidNet, ShakeShake, WideResNet, build_model
from sam.models.common import PoolPadShortcut, SameConv2d
from sam.models.shakeshake import ShakeShortcut
from sam.models.wrn import WideBasicBlock

F64 = torch.float64
STYLED = [name for name in MODELS if not name.startswith("resnet")]  # models taking `style`

# Small versions of the three styled families: (num_classes, style) -> model.
SMALL: dict[str, Callable[[int, str], nn.Module]] = {
    "wrn16_1": lambda c, style: WideResNet(16, 1, c, style=style),
    "shakeshake8_2x4d": lambda c, style: ShakeShake(8, 4, c, style=style),
    "pyramidnet11_shakedrop": lambda c, style: PyramidNet(11, 12, c, shakedrop=True, style=style),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Build on the meta device with the init functions as no-ops (meta ``normal_`` runs
    through slow Python decompositions): a 36M-parameter model in ~0.05 s."""
    with torch.device("meta"), contextlib.ExitStack() as stack:
        for name in (
            "kaiming_normal_",
            "kaiming_uniform_",
            "uniform_",
            "normal_",
            "ones_",
            "zeros_",
        ):
            stack.enter_context(mock.patch.object(nn.init, name, lambda t, *a, **k: t))
        yield


def meta_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    with shapes_only():  # parameter counts need shapes only
        return build_model(name, num_classes, **kwargs)


def official_wrn_params(depth: int, k: int, num_classes: int) -> int:
    """By hand from sam_jax/models/wide_resnet.py: bias-free 3x3 convs, BatchNorm with a
    scale and a bias per channel, parameter-free shortcuts, a dense layer with bias."""
    n = (depth - 4) // 6
    total = 9 * 3 * 16  # init_conv
    c_in = 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * c_in + 9 * c_in * width  # init_bn, conv1
            total += 2 * width + 9 * width * width  # bn_2, conv2
            c_in = width
    return total + 2 * c_in + c_in * num_classes + num_classes  # pre-pool-bn, dense


def images(batch: int = 2, size: int = 32, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, size, size, generator=g, dtype=F64)


# ---------------------------------------------------------------------------- counts


@pytest.mark.parametrize("num_classes, expected", [(10, 36_220_634), (100, 36_278_324)])
def test_official_wrn28_10_param_count(num_classes: int, expected: int) -> None:
    assert official_wrn_params(28, 10, num_classes) == expected
    assert n_params(meta_model("wrn28_10", num_classes, style="official")) == expected


def test_pytorch_wrn28_10_unchanged_and_default() -> None:
    pytorch = meta_model("wrn28_10", 10, style="pytorch")
    assert n_params(pytorch) == 36_479_194
    assert repr(meta_model("wrn28_10", 10)) == repr(pytorch)
    # The whole difference is the three 1x1 projection shortcuts.
    shortcuts = 16 * 160 + 160 * 320 + 320 * 640
    assert n_params(pytorch) - n_params(meta_model("wrn28_10", 10, style="official")) == shortcuts


@pytest.mark.parametrize("name", STYLED)
def test_official_param_counts(name: str) -> None:
    official = n_params(meta_model(name, 10, style="official"))
    if name.startswith("wrn"):
        kw = MODELS[name].keywords  # type: ignore[attr-defined]
        assert official == official_wrn_params(kw["depth"], kw["widen_factor"], 10)
    else:  # ShakeShake and PyramidNet: the styles differ in wiring and init, not in shapes
        assert official == n_params(meta_model(name, 10))


def test_unknown_style_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:
        build_model("wrn16_8", 10, style="jax")
    assert "'jax'" in str(info.value) and all(style in str(info.value) for style in STYLES)


# ---------------------------------------------------------------------------- WRN shortcuts


def test_official_wrn_shortcut_is_avg_pool_then_zero_pad_of_raw_input() -> None:
    block = WideBasicBlock(2, 4, 2, 0.0, style="official", preact_shortcut=False).to(F64)
    assert isinstance(block.shortcut, PoolPadShortcut)
    assert not list(block.shortcut.parameters())
    nn.init.zeros_(block.conv2.weight)  # silence the residual branch: output == shortcut
    # Negative values too, so a ReLU or BatchNorm before the shortcut would show.
    x = torch.arange(2 * 2 * 4 * 4, dtype=F64).reshape(2, 2, 4, 4) - 30
    pooled = x.reshape(2, 2, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 means by hand
    expected = torch.cat([pooled, torch.zeros_like(pooled)], dim=1)  # 2 zero channels after
    assert torch.equal(block.train()(x), expected)


@pytest.mark.parametrize("widen_factor", [1, 2])
def test_official_wrn_first_block_shortcut_is_preactivated(widen_factor: int) -> None:
    """activate_before_residual: the first block's shortcut is BN-ReLU(x), padded to 16k
    channels (stride 1), even when it is an identity (k = 1)."""
    model = WideResNet(10, widen_factor, 10, style="official").to(F64)
    blocks = list(model.blocks)
    assert [b.preact_shortcut for b in blocks] == [True, False, False]
    assert not any(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    first = blocks[0]
    nn.init.zeros_(first.conv2.weight)
    x = images(4, 8, 16)
    activated = F.relu(F.batch_norm(x, None, None, training=True, eps=1e-5))
    expected = F.pad(activated, (0, 0, 0, 0, 0, 16 * (widen_factor - 1)))
    torch.testing.assert_close(first.train()(x), expected)


def test_pytorch_wrn_keeps_preactivated_1x1_shortcuts() -> None:
    model = WideResNet(10, 2, 10)
    assert [b.preact_shortcut for b in model.blocks] == [True, True, True]
    assert all(type(b.shortcut) is nn.Conv2d for b in model.blocks)


# ---------------------------------------------------------------------------- padding


@pytest.mark.parametrize("name", list(SMALL))
def test_official_strided_convs_use_flax_same_padding(name: str) -> None:
    model = SMALL[name](10, "official").to(F64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    strided = [m for m in convs if m.stride != (1, 1)]
    assert strided and all(isinstance(m, SameConv2d) for m in strided)
    # Stride 1: flax 'SAME' is PyTorch's padding 1 on both sides.
    assert all(m.padding == (1, 1) for m in convs if m.stride == (1, 1))

    conv = strided[0]
    x = images(2, 8, conv.in_channels)
    out = conv(x)
    assert out.shape[-2:] == (4, 4)
    torch.testing.assert_close(out, F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2))
    symmetric = F.conv2d(x, conv.weight, stride=2, padding=1)  # what the pytorch style does
    assert not torch.allclose(out, symmetric)
    # Odd size: 'SAME' pads 1 and 1 (total 2), the symmetric case.
    x_odd = images(2, 9, conv.in_channels)
    torch.testing.assert_close(conv(x_odd), F.conv2d(x_odd, conv.weight, stride=2, padding=1))


@pytest.mark.parametrize("name", list(SMALL))
def test_pytorch_style_convs_unchanged(name: str) -> None:
    model = SMALL[name](10, "pytorch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(m) is nn.Conv2d for m in convs)
    assert all(m.padding == (1, 1) for m in convs if m.kernel_size == (3, 3))


# ---------------------------------------------------------------------------- init and BN


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", list(SMALL))
def test_official_dense_init(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    fc = SMALL[name](num_classes, "official").fc
    bound = 1 / math.sqrt(num_classes)  # the fan_out of the dense layer, not its fan_in
    assert fc.weight.abs().max() <= bound
    assert fc.weight.abs().max() > 0.9 * bound  # fills U(-bound, bound)
    assert torch.all(fc.bias == 0)
    pytorch_fc = SMALL[name](num_classes, "pytorch").fc  # PyTorch's U(+-1/sqrt(fan_in))
    assert pytorch_fc.weight.abs().max() <= 1 / math.sqrt(pytorch_fc.in_features)


@pytest.mark.parametrize("name", list(SMALL))
def test_official_conv_and_batchnorm_init(name: str) -> None:
    torch.manual_seed(0)
    model = SMALL[name](10, "official")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            # flax momentum 0.9 (decay of the running average) is torch's momentum 0.1.
            assert (m.momentum, m.eps) == (0.1, 1e-5)
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # He-normal, fan_out: variance_scaling(2.0, 'fan_out', 'normal'), std sqrt(2 / fan_out).
    widest = max(
        (m for m in model.modules() if isinstance(m, nn.Conv2d)), key=lambda m: m.weight.numel()
    )
    fan_out = widest.out_channels * widest.kernel_size[0] * widest.kernel_size[1]
    assert widest.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)


# ---------------------------------------------------------------------------- Shake-Shake


def test_official_shake_shortcut_has_no_relu() -> None:
    shortcut = ShakeShortcut(2, 4, 2, relu=False).to(F64).eval()
    x = images(1, 4, 2)  # has negative values
    path1 = x[:, :, ::2, ::2]  # 1x1 average pool with stride 2
    path2 = x[:, :, 1::2, 1::2]  # the same, one pixel right and down
    branches = [F.conv2d(path1, shortcut.conv1.weight), F.conv2d(path2, shortcut.conv2.weight)]
    expected = torch.cat(branches, dim=1) / math.sqrt(1 + 1e-5)  # BN at its initial stats
    torch.testing.assert_close(shortcut(x), expected)

    def relus(style: str) -> list[bool]:
        model = ShakeShake(8, 4, 10, style=style)
        return [m.relu for m in model.modules() if isinstance(m, ShakeShortcut)]

    assert relus("official") == [False] * 3 and relus("pytorch") == [True] * 3


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", list(SMALL))
def test_official_float64_channels_last_forward(name: str) -> None:
    torch.manual_seed(0)
    model = SMALL[name](10, "official").to(F64)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = images(4)
    torch.manual_seed(1)
    reference = model(x)
    torch.manual_seed(1)
    out = last(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (4, 10) and out.dtype == F64
    torch.testing.assert_close(out, reference)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in last.parameters())
    with torch.no_grad():
        torch.testing.assert_close(last.eval()(x), model.eval()(x))


def _flax_same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """``nn.Conv(..., padding='SAME')``: lax pads (total // 2, total - total // 2)."""
    pads = []
    for size, k in ((x.shape[-1], weight.shape[-1]), (x.shape[-2], weight.shape[-2])):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, stride=stride)


def _flax_wrn(model: WideResNet, x: torch.Tensor) -> torch.Tensor:
    """sam_jax/models/wide_resnet.py transcribed line by line (train mode), on our weights."""

    def activation(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:  # utils.activation
        return F.relu(F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=1e-5))

    def output_add(block_x: torch.Tensor, orig_x: torch.Tensor) -> torch.Tensor:
        stride = orig_x.shape[-1] // block_x.shape[-1]
        if block_x.shape[1] != orig_x.shape[1]:
            orig_x = F.avg_pool2d(orig_x, stride, stride)
            orig_x = F.pad(orig_x, (0, 0, 0, 0, 0, block_x.shape[1] - orig_x.shape[1]))
        return block_x + orig_x

    x = _flax_same_conv(x, model.conv1.weight, 1)  # init_conv
    for i, b in enumerate(model.blocks):
        activate_before_residual = i == 0
        if activate_before_residual:
            x = activation(x, b.bn1)
        orig_x = block_x = x
        if not activate_before_residual:
            block_x = activation(block_x, b.bn1)
        block_x = _flax_same_conv(block_x, b.conv1.weight, b.conv1.stride[0])
        block_x = activation(block_x, b.bn2)
        block_x = _flax_same_conv(block_x, b.conv2.weight, 1)
        x = output_add(block_x, orig_x)
    x = activation(x, model.bn).mean(dim=(2, 3))  # pre-pool-bn, avg_pool over the whole map
    return F.linear(x, model.fc.weight, model.fc.bias)


@pytest.mark.parametrize("widen_factor", [1, 2])
def test_official_wrn_matches_flax_transcription(widen_factor: int) -> None:
    torch.manual_seed(0)
    model = WideResNet(16, widen_factor, 10, style="official").to(F64).train()
    x = images(4)
    torch.testing.assert_close(model(x), _flax_wrn(model, x))
