"""CIFAR architectures: shapes, gradients, parameter counts, RNG replay and the registry."""

from pathlib import Path

import pytest
import torch
from torch import nn

from sam.errors import UserError
from sam.models import MODELS, build_model
from sam.models.pyramidnet import ShakeDrop
from sam.models.shake import shake_scale

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"

# Published parameter counts for 10 classes (the papers round to 0.1M or 0.01M).
PUBLISHED_PARAMS = {
    "wrn28_10": 36.5e6,
    "wrn16_8": 11.0e6,
    "resnet18": 11.2e6,
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "shakeshake26_2x96d": 26.2e6,
    "pyramidnet272": 26.0e6,
    "pyramidnet272_shakedrop": 26.0e6,
}

# Models whose training-mode forward pass draws random numbers (with the kwargs that make it so).
STOCHASTIC = {
    "wrn16_8": {"dropout": 0.3},
    "shakeshake26_2x96d": {},
    "pyramidnet272_shakedrop": {},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training step's worth of work: output and a copy of every parameter gradient."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_registry_names() -> None:
    assert set(MODELS) == set(PUBLISHED_PARAMS)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_param_count_matches_paper(name: str) -> None:
    count = n_params(build_model(name, num_classes=10))
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01), count


def test_exact_param_counts() -> None:
    assert n_params(build_model("wrn28_10", 10)) == 36_479_194
    assert n_params(build_model("resnet18", 10)) == 11_173_962
    assert n_params(build_model("resnet20", 10)) == 269_722


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).train()
    out, grads = forward_backward(model, images())
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert len(grads) == len(list(model.parameters()))  # every parameter got a gradient
    assert all(torch.isfinite(g).all() for g in grads)


def test_num_classes_is_respected() -> None:
    model = build_model("resnet20", num_classes=100).eval()
    assert model(images()).shape == (2, 100)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_rng_replay_gives_identical_passes(name: str) -> None:
    """SAM replays the global RNG state between its two passes: same draws, same gradients."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **STOCHASTIC[name]).train()
    x = images()

    torch.manual_seed(123)
    out1, grads1 = forward_backward(model, x)
    torch.manual_seed(123)
    out2, grads2 = forward_backward(model, x)
    assert torch.equal(out1, out2)
    assert all(torch.equal(a, b) for a, b in zip(grads1, grads2, strict=True))

    state = torch.get_rng_state()  # what the optimizer saves and restores
    out3, grads3 = forward_backward(model, x)
    torch.set_rng_state(state)
    out4, grads4 = forward_backward(model, x)
    assert torch.equal(out3, out4)
    assert all(torch.equal(a, b) for a, b in zip(grads3, grads4, strict=True))

    # The layers really are stochastic, and their draws come from the global generator.
    assert not torch.equal(out1, out3)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_eval_is_deterministic(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **STOCHASTIC.get(name, {})).eval()
    x = images()
    with torch.no_grad():
        torch.manual_seed(1)
        out1 = model(x)
        torch.manual_seed(2)
        out2 = model(x)
    assert torch.equal(out1, out2)


def test_shake_scale_uses_separate_forward_and_backward_scales() -> None:
    x = torch.ones(3, 2, requires_grad=True)
    fwd = torch.tensor([[0.1], [0.2], [0.3]])
    bwd = torch.tensor([[0.7], [0.8], [0.9]])
    y = shake_scale(x, fwd, bwd)
    y.sum().backward()
    assert torch.allclose(y, fwd.expand(3, 2))
    assert torch.allclose(x.grad, bwd.expand(3, 2))


def test_shakedrop_extremes() -> None:
    x = torch.randn(64, 4, 2, 2, requires_grad=True)
    keep = ShakeDrop(p_drop=0.0).train()
    keep(x).sum().backward()
    assert torch.allclose(keep(x), x)  # gate always 1: identity in both directions
    assert torch.allclose(x.grad, torch.ones_like(x))

    x.grad = None
    drop = ShakeDrop(p_drop=1.0).train()
    y = drop(x)
    y.sum().backward()
    alpha = (y / x).detach()
    assert ((alpha >= -1) & (alpha <= 1)).all()  # forward scale ~ U(-1, 1) per sample
    assert (alpha < 0).any()
    assert ((x.grad >= 0) & (x.grad <= 1)).all()  # backward scale ~ U(0, 1) per sample
    assert torch.allclose(ShakeDrop(p_drop=0.3).eval()(x), 0.7 * x)


def test_shakedrop_probability_grows_linearly_to_half() -> None:
    model = build_model("pyramidnet272_shakedrop", num_classes=10)
    probs = [m.p_drop for m in model.modules() if isinstance(m, ShakeDrop)]
    assert len(probs) == 90
    assert probs[-1] == pytest.approx(0.5)
    assert probs[0] == pytest.approx(0.5 / 90)
    assert all(b > a for a, b in zip(probs, probs[1:], strict=False))
    assert not any(isinstance(m, ShakeDrop) for m in build_model("pyramidnet272", 10).modules())


def test_build_model_kwargs_are_passed() -> None:
    model = build_model("wrn16_8", num_classes=10, dropout=0.3)
    assert all(block.dropout == 0.3 for block in model.blocks)


def test_unknown_model_raises_user_error() -> None:
    with pytest.raises(UserError) as info:
        build_model("resnet9000", num_classes=10)
    message = str(info.value)
    assert "\n" not in message
    assert "resnet9000" in message and all(name in message for name in MODELS)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_config_instantiates(name: str) -> None:
    instantiate = pytest.importorskip("hydra.utils").instantiate
    from omegaconf import OmegaConf

    path = CONFIG_DIR / f"{name}.yaml"
    assert path.read_text().startswith("# ")  # the model's name as a comment
    cfg = OmegaConf.create({"model": OmegaConf.load(path), "dataset": {"num_classes": 100},
                            "fidelity": {"model_style": "pytorch"}})  # the models' default
    model = instantiate(cfg.model)
    reference = build_model(name, num_classes=100)
    assert type(model) is type(reference)
    assert n_params(model) == n_params(reference)
    assert repr(model) == repr(reference)


# --------------------------------------------------------------------------- WRN without BN


def _wrn_no_norm_params(depth: int, k: int, classes: int, style: str, c_in: int = 3) -> int:
    """WRN-depth-k with norm="none", counted layer by layer by hand: every 3x3 conv has
    in*out*9 weights + out biases, a pytorch-style 1x1 shortcut in*out weights (no bias;
    official: parameter-free), the linear layer 64k*classes + classes; no BatchNorm."""
    n = (depth - 4) // 6
    total = c_in * 16 * 9 + 16  # stem conv
    c = 16
    for stride, out in ((1, 16 * k), (2, 32 * k), (2, 64 * k)):
        for i in range(n):
            total += c * out * 9 + out  # conv1 (3x3, bias)
            total += out * out * 9 + out  # conv2 (3x3, bias)
            if i == 0 and (stride != 1 or c != out) and style == "pytorch":
                total += c * out  # 1x1 projection shortcut
            c = out
    return total + 64 * k * classes + classes


@pytest.mark.parametrize("style", ["pytorch", "official"])
@pytest.mark.parametrize(("depth", "k"), [(10, 2), (16, 1), (40, 10)])
def test_wrn_without_norm_has_no_norm_layer_and_the_hand_counted_parameters(depth, k, style):
    from sam.models import WideResNet

    model = WideResNet(depth, k, 10, style=style, norm="none")
    assert n_params(model) == _wrn_no_norm_params(depth, k, 10, style)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert list(model.buffers()) == []


def test_wrn40_10_without_norm_counts_by_hand():
    """The hand formula, written out for WRN-40-10 (6 blocks a stage, widths 160/320/640)."""
    stem = 3 * 16 * 9 + 16
    # first block: conv1 (in -> out, bias), conv2 (out -> out, bias), 1x1 shortcut (in x out);
    # five more blocks of two out -> out convs
    stage1 = 16 * 160 * 9 + 160 + 160 * 160 * 9 + 160 + 16 * 160 + 10 * (160 * 160 * 9 + 160)
    stage2 = 160 * 320 * 9 + 320 + 320 * 320 * 9 + 320 + 160 * 320 + 10 * (320 * 320 * 9 + 320)
    stage3 = 320 * 640 * 9 + 640 + 640 * 640 * 9 + 640 + 320 * 640 + 10 * (640 * 640 * 9 + 640)
    fc = 640 * 10 + 10
    assert _wrn_no_norm_params(40, 10, 10, "pytorch") == stem + stage1 + stage2 + stage3 + fc


@pytest.mark.parametrize("style", ["pytorch", "official"])
def test_wrn_without_norm_starts_with_identity_blocks_and_trains(style):
    """Zero-initialised residual branches: a block whose shape does not change returns its
    input exactly; the logits of a 22-layer net start O(1); every parameter gets a
    gradient after one SGD step (conv1 of a branch only once its conv2 moved)."""
    from sam.models import WideResNet

    torch.manual_seed(0)
    model = WideResNet(22, 2, 10, style=style, norm="none")
    x = images(8)
    inner = model.blocks[1]  # 32 -> 32 channels, stride 1: identity shortcut
    h = torch.randn(2, 32, 32, 32)
    assert torch.equal(inner(h), h)
    assert all(not m.bias.detach().any() for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.bias is not None)
    assert model(x).abs().max() < 10
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.arange(8) % 10
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())


def test_wrn_norm_is_checked():
    from sam.models import WideResNet

    with pytest.raises(UserError, match="model.norm 'layer'"):
        WideResNet(10, 1, 10, norm="layer")


def test_wrn_batchnorm_default_builds_the_same_network_as_without_the_option():
    """norm="batchnorm" (the default) draws the same weights and has the BN layers."""
    from sam.models import WideResNet

    torch.manual_seed(1)
    a = WideResNet(10, 2, 10)
    torch.manual_seed(1)
    b = WideResNet(10, 2, 10, norm="batchnorm")
    assert repr(a) == repr(b) and sum(isinstance(m, nn.BatchNorm2d) for m in a.modules()) == 7
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


@pytest.mark.parametrize(("overrides", "name"), [
    (["model=resnet20"], "resnet20"),
    (["model=resnet20", "model.depth=8"], "resnet8"),  # the net trained, not its file
    (["model=wrn16_8", "model.depth=10", "model.widen_factor=1"], "wrn10_1"),
    (["model=wrn40_10", "model.norm=none"], "wrn40_10 norm=none"),
    (["model=resnet18"], "resnet18"),
])
def test_results_name_the_model_that_trained(overrides, name):
    from helpers import compose_train, settings_of

    from sam.train.record import _summary

    cfg = compose_train(*overrides)
    choice = overrides[0].split("=")[1]
    summary = _summary(settings_of(cfg), {"model": choice}, "cifar10", "test")
    assert summary["model"] == name
