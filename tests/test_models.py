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
