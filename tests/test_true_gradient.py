"""``sam.models.true_gradient``: the official ascent pass of Shake-Shake and ShakeDrop, and
the ``fidelity`` group that turns it (and ``model_style``) on.

google-research/sam (sam_jax/models/utils.py:105-118, 166-183) runs SAM's clean pass with
``true_gradient=True``: the gradient flows through the forward gate; the perturbed pass
uses the independent backward gate, with the same draws. Everything here is float64 and
checked against references written out below, independent of sam/models/shake.py.
"""

import contextlib
import copy
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from sam.models import ShakeModule, true_gradient
from sam.models.pyramidnet import PyramidBlock, ShakeDrop
from sam.models.shakeshake import ShakeBlock
from sam.optim import SAM, sam_step
from sam.train import StepOptions, train_epoch

F64 = torch.float64
B = 8  # images per batch: with p_drop 0.5 both ShakeDrop gate values occur (checked)


# ------------------------------------------------------------------------ references
def draw(n: int) -> torch.Tensor:
    """One per-sample U(0, 1) draw, as the models draw it (global generator, float64)."""
    return torch.rand((n, 1, 1, 1), dtype=F64)


def mix(forward: torch.Tensor, backward: torch.Tensor, mode: str) -> torch.Tensor:
    """Official: ascent ``x_forward``; otherwise ``x_backward + sg(x_forward - x_backward)``."""
    return forward if mode == "true" else backward + (forward - backward).detach()


def ref_shake_block(block: ShakeBlock, x: torch.Tensor, mode: str) -> torch.Tensor:
    b1, b2 = block.branch1(x), block.branch2(x)
    alpha, beta = draw(len(x)), draw(len(x))
    forward = alpha * b1 + (1 - alpha) * b2
    return mix(forward, beta * b1 + (1 - beta) * b2, mode) + block.shortcut(x)


def ref_pyramid_block(block: PyramidBlock, x: torch.Tensor, mode: str) -> torch.Tensor:
    o = block.branch(x)
    keep = draw(len(x)) >= block.shakedrop.p_drop
    alpha, beta = 2 * draw(len(x)) - 1, draw(len(x))
    forward = o * torch.where(keep, 1.0, alpha)
    o = mix(forward, o * torch.where(keep, 1.0, beta), mode)
    shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if block.stride != 1 else x
    return o + F.pad(shortcut, (0, 0, 0, 0, 0, o.shape[1] - shortcut.shape[1]))


def ref_forward(model: nn.Sequential, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The tiny models below, with the gates written out ("true": forward gate's gradient)."""
    for layer in model:
        if isinstance(layer, ShakeBlock):
            x = ref_shake_block(layer, x, mode)
        elif isinstance(layer, PyramidBlock):
            x = ref_pyramid_block(layer, x, mode)
        else:
            x = layer(x)
    return x


def tiny(kind: str, seed: int = 0) -> nn.Sequential:
    """Two shake blocks (one with a strided shortcut) between a stem and a linear head."""
    torch.manual_seed(seed)
    if kind == "shakeshake":
        blocks = [ShakeBlock(4, 6, 2, "official"), ShakeBlock(6, 6, 1, "official")]
        width = 6
    else:
        blocks = [PyramidBlock(4, 2, 1, True, 0.5), PyramidBlock(8, 10, 2, False, 0.5)]
        width = 10
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), *blocks,
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))
    return model.to(F64).train()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 8, 8, generator=g, dtype=F64), torch.randint(0, 3, (B,), generator=g)


def grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


KINDS = ["shakeshake", "shakedrop"]


# ------------------------------------------------------------------ one pass, one block
@pytest.mark.parametrize("inside", [True, False])
def test_shake_block_gradient(inside: bool) -> None:
    torch.manual_seed(0)
    block = ShakeBlock(3, 5, 2).to(F64).train()
    x = torch.randn(4, 3, 6, 6, dtype=F64, requires_grad=True)
    target = torch.randn(4, 5, 3, 3, dtype=F64)

    def loss(out: torch.Tensor) -> torch.Tensor:  # nonlinear: the gradient depends on out
        return (out - target).pow(4).sum()

    torch.manual_seed(5)
    with true_gradient(block) if inside else contextlib.nullcontext():
        out = block(x)
        got = torch.autograd.grad(loss(out), [x, *block.parameters()])
    torch.manual_seed(5)
    b1, b2 = block.branch1(x), block.branch2(x)
    alpha, beta = draw(4), draw(4)
    forward = alpha * b1 + (1 - alpha) * b2 + block.shortcut(x)
    torch.testing.assert_close(out, forward, rtol=0, atol=1e-12)
    if inside:  # the gradient of the function computed: through alpha
        want = torch.autograd.grad(loss(forward), [x, *block.parameters()])
    else:  # the shake gradient: dL/d(out) at the forward value, backpropagated with beta
        upstream = torch.autograd.grad(loss(forward), forward, retain_graph=True)[0]
        backward = beta * b1 + (1 - beta) * b2 + block.shortcut(x)
        want = torch.autograd.grad(backward, [x, *block.parameters()], upstream)
    assert (alpha - beta).abs().min() > 1e-3  # the two gradients differ
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inside", [True, False])
def test_shakedrop_gradient(inside: bool) -> None:
    drop = ShakeDrop(0.5).train()
    x = torch.randn(B, 2, 3, 3, dtype=F64, requires_grad=True)
    torch.manual_seed(3)
    with true_gradient(drop) if inside else contextlib.nullcontext():
        out = drop(x)
        (got,) = torch.autograd.grad(out.pow(3).sum(), x)
    torch.manual_seed(3)
    keep = draw(B) >= 0.5
    alpha, beta = 2 * draw(B) - 1, draw(B)
    assert 0 < keep.sum() < B
    forward = torch.where(keep, 1.0, alpha)
    torch.testing.assert_close(out, x * forward, rtol=0, atol=1e-15)
    scale = forward if inside else torch.where(keep, 1.0, beta)
    torch.testing.assert_close(got, 3 * (x * forward).square() * scale, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_random_stream_and_outside_unchanged(kind: str) -> None:
    """The context draws the same numbers (and consumes the same stream); after it the
    model computes bit for bit what it did before, and no instance attribute is left."""
    x, y = batch()
    outs, after, gradients = [], [], []
    for use in (False, True, False):
        model = tiny(kind)
        torch.manual_seed(11)
        with true_gradient(model) if use else contextlib.nullcontext():
            out = model(x)
            gradients.append(grads(model, F.cross_entropy(out, y)))
        outs.append(out)
        after.append(torch.rand(4))
        if use:  # now outside again: as the first run
            torch.manual_seed(11)
            out = model(x)
            assert all(torch.equal(a, b) for a, b in
                       zip(grads(model, F.cross_entropy(out, y)), gradients[0], strict=True))
            assert torch.equal(out, outs[0])
    assert torch.equal(after[0], after[1]) and torch.equal(after[0], after[2])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-14)
    assert torch.equal(outs[2], outs[0])
    assert not all(torch.allclose(a, b) for a, b in zip(gradients[0], gradients[1], strict=True))
    shakers = [m for m in tiny(kind).modules() if isinstance(m, ShakeModule)]
    assert len(shakers) == 2 and all("true_gradient" not in vars(m) for m in shakers)


def test_context_restores_nested_and_on_error() -> None:
    model = tiny("shakeshake")
    blocks = [m for m in model.modules() if isinstance(m, ShakeModule)]
    with pytest.raises(RuntimeError), true_gradient(model):
        with true_gradient(model[2]):
            assert all(b.true_gradient for b in blocks)
        assert all(b.true_gradient for b in blocks)
        raise RuntimeError
    assert not any(b.true_gradient or "true_gradient" in vars(b) for b in blocks)


def test_wrappers_reach_the_wrapped_modules() -> None:
    """train_epoch passes the training model: a torch.compile or DDP wrapper, whose
    modules() include the wrapped model's own (DDP holds it as ``.module``)."""
    net = tiny("shakedrop")
    wrapper = nn.Module()
    wrapper.module = net  # what DistributedDataParallel does
    for outer in (torch.compile(net), wrapper):
        with true_gradient(outer):
            assert all(m.true_gradient for m in net.modules() if isinstance(m, ShakeModule))
        assert not any(m.true_gradient for m in net.modules() if isinstance(m, ShakeModule))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_model_keeps_the_draws(kind: str) -> None:
    """AOT autograd drops an unused random op: without ``0 * beta`` the compiled clean
    pass would skip beta's draw and see other gates than the replayed perturbed pass."""
    x, y = batch()
    eager, compiled = tiny(kind), torch.compile(tiny(kind), backend="aot_eager")
    for use in (True, False, True):
        seen = []
        for model in (eager, compiled):
            torch.manual_seed(3)
            with true_gradient(model) if use else contextlib.nullcontext():
                out = model(x)
                seen.append((out, grads(model, F.cross_entropy(out, y)), torch.rand(3)))
        (out_e, grad_e, after_e), (out_c, grad_c, after_c) = seen
        assert torch.equal(after_e, after_c)
        torch.testing.assert_close(out_c, out_e, rtol=1e-12, atol=1e-14)
        for a, b in zip(grad_c, grad_e, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------- SAM steps
def reference_sam_step(model: nn.Sequential, x, y, m: int, rho: float, lr: float):
    """Per shard of m: g at w with the true gradient, eps = rho g / ||g||, the gradient at
    w + eps with the shake backward gate and the same draws; SGD on their mean. Returns the
    new parameters, the descent gradient and the BatchNorm buffers (clean passes only)."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]
    descent = [torch.zeros_like(p) for p in params]
    shards = len(x) // m
    buffers = [b.detach().clone() for b in model.buffers()]
    updates = [torch.zeros_like(b, dtype=F64) for b in buffers]
    for xs, ys in zip(x.split(m), y.split(m), strict=True):
        state = torch.get_rng_state()
        for b, b0 in zip(model.buffers(), buffers, strict=True):
            b.copy_(b0)
        g = grads(model, F.cross_entropy(ref_forward(model, xs, "true"), ys))
        for u, b in zip(updates, model.buffers(), strict=True):
            u += b.double() / shards
        norm = torch.sqrt(sum(gi.square().sum() for gi in g))
        with torch.no_grad():
            for p, wi, gi in zip(params, w, g, strict=True):
                p.copy_(wi + rho * gi / norm)
        torch.set_rng_state(state)
        h = grads(model, F.cross_entropy(ref_forward(model, xs, "shake"), ys))
        for d, hi in zip(descent, h, strict=True):
            d += hi / shards
        with torch.no_grad():
            for p, wi in zip(params, w, strict=True):
                p.copy_(wi)
    new = [wi - lr * d for wi, d in zip(w, descent, strict=True)]
    kept = [u.to(b.dtype) if b.is_floating_point() else b0 + 1
            for u, b, b0 in zip(updates, model.buffers(), buffers, strict=True)]
    return new, descent, kept


def check_sam_step(kind: str, m: int | None, impl: str) -> None:
    model, (x, y) = tiny(kind), batch()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    torch.manual_seed(7)
    want_w, want_g, want_buffers = reference_sam_step(model, x, y, m or B, 0.5, 0.1)
    torch.manual_seed(7)
    sam_step(model, opt, F.cross_entropy, x, y, m=m, shard_impl=impl,
             ascent_context=lambda: true_gradient(model))
    assert not getattr(opt, "vmap_failed", False)
    for p, w, g in zip(model.parameters(), want_w, want_g, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)
    for b, want in zip(model.buffers(), want_buffers, strict=True):
        torch.testing.assert_close(b, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m", [None, B // 2])
def test_sam_step_matches_reference(kind: str, m: int | None) -> None:
    check_sam_step(kind, m, "loop")


@pytest.mark.parametrize("kind", KINDS)
def test_sam_step_vmap_matches_reference(kind: str) -> None:
    """The vmapped shards draw their own numbers ("different" randomness): here the i-th
    draw of a block's k (alpha, beta; ShakeDrop: gate, alpha, beta) is a fixed vector of
    the shard size, in the model and in the reference, so the loop reference applies."""
    k = 2 if kind == "shakeshake" else 3
    calls = iter(range(10**6))

    def fixed(n: int) -> torch.Tensor:
        u = torch.linspace(0.05, 0.95, n, dtype=F64).roll(next(calls) % k)
        return u.reshape(n, 1, 1, 1)

    def fixed_uniform(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * fixed(len(x)).reshape(-1, *[1] * (x.dim() - 1))

    module = "sam.models.shakeshake" if kind == "shakeshake" else "sam.models.pyramidnet"
    with mock.patch(f"{module}.per_sample_uniform", fixed_uniform), \
            mock.patch.dict(globals(), {"draw": fixed}):
        check_sam_step(kind, B // 2, "vmap")


def test_sam_step_without_context_uses_the_shake_gradient() -> None:
    model, (x, y) = tiny("shakeshake"), batch()
    torch.manual_seed(7)
    _, with_true, _ = reference_sam_step(model, x, y, B, 0.5, 0.1)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    torch.manual_seed(7)
    sam_step(model, opt, F.cross_entropy, x, y)
    assert not all(torch.allclose(p.grad, g) for p, g in zip(model.parameters(), with_true,
                                                               strict=True))


# ---------------------------------------------------------------------- train_epoch
@pytest.mark.parametrize("fidelity, optim, expected", [
    ({"true_gradient": True}, "sam", True), ({"true_gradient": False}, "sam", False),
    (None, "sam", False), ({"true_gradient": True}, "sgd", False)])
def test_train_epoch_passes_the_context(fidelity, optim, expected) -> None:
    model, (x, y) = tiny("shakeshake"), batch()
    if optim == "sam":
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = StepOptions(true_gradient=(fidelity or {}).get("true_gradient", False))
    seen = []

    def spy(*args, ascent_context=None, **kwargs):
        seen.append(ascent_context)
        if ascent_context is not None:
            with ascent_context():
                assert all(m.true_gradient for m in model.modules() if isinstance(m, ShakeModule))
        return sam_step(*args, ascent_context=ascent_context, **kwargs)

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with mock.patch("sam.train.loop.sam_step", spy):
        train_epoch(model, opt, scheduler, [(x, y)], options, None, None,
                    torch.device("cpu"), False)
    assert len(seen) == 1 and (seen[0] is not None) == expected


# --------------------------------------------------------------------------- configs
WRN28_10_PARAMS = {"official": 36_220_634, "pytorch": 36_479_194}  # CIFAR-10


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Build on the meta device with the init functions as no-ops: shapes are enough."""
    with torch.device("meta"), contextlib.ExitStack() as stack:
        for name in ("kaiming_normal_", "kaiming_uniform_", "uniform_", "normal_", "ones_",
                     "zeros_"):
            stack.enter_context(mock.patch.object(nn.init, name, lambda t, *a, **k: t))
        yield


def model_configs() -> list[str]:
    from pathlib import Path

    return sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" /
                                   "model").glob("*.yaml"))


@pytest.mark.parametrize("fidelity", ["official", "pytorch"])
@pytest.mark.parametrize("name", model_configs())
def test_model_configs_build_per_fidelity(name: str, fidelity: str) -> None:
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", f"fidelity={fidelity}"])
    OmegaConf.resolve(cfg)
    assert cfg.fidelity.true_gradient == (fidelity == "official")
    styled = not name.startswith(("resnet", "timm"))  # no official version of these
    assert cfg.model.get("style") == (fidelity if styled else None)
    with shapes_only():
        model = instantiate(cfg.model)
    if name == "wrn28_10":
        assert sum(p.numel() for p in model.parameters()) == WRN28_10_PARAMS[fidelity]
