"""Our SGD and SAM steps against the official code's train_step, transcribed by hand.

google-research/sam, sam_jax/training_utils/flax_training.py (commit dae9904), for a batch
split over devices (here: shards of m examples):
  forward_and_loss (:496-523)  loss = mean CE + l2_reg * 0.5 * sum ||w||^2 over ALL params
  get_sam_gradient (:527-551)  per device: g = grad loss(w); eps = rho g / ||g|| (dual_vector
                               :454-463, global norm, no epsilon); grad loss(w + eps)
  train_step (:553-568)        grad = pmean(grad) over devices; clip_by_global_norm (:424-451):
                               where(||g|| < c, g, g / ||g|| * c); optim.Momentum(beta 0.9,
                               nesterov): v = 0.9 v + g, w -= lr (g + 0.9 v)
  cosine lr (:377-396)         lr_t = lr (0.5 cos(pi t / T) + 0.5), t = 0, 1, ... per step
The reference below is that algorithm in float64 autograd, written without sam.optim;
BatchNorm normalises each device's batch with its own statistics in both passes.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sam.optim import SAM, Descent, sam_step
from sam.train import cosine_schedule

LR, RHO, LAM, CLIP, TOTAL = 0.1, 0.05, 5e-4, 5.0, 10
B, M, STEPS = 8, 4, 3
GAMMA = 30.0


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).double()
    with torch.no_grad():  # large BatchNorm scales: the gradient norm stays above CLIP
        net[4].weight.fill_(GAMMA)
    return net


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(B, 3, 6, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (B,), generator=g)) for _ in range(STEPS)]


def official_loss(net: nn.Module, w: dict, x, y) -> torch.Tensor:
    """forward_and_loss: mean cross-entropy + 0.5 l2 sum ||w||^2 over all parameters."""
    ce = F.cross_entropy(functional_call(net, w, (x,)), y)
    return ce + LAM * 0.5 * sum((p**2).sum() for p in w.values())


def official_grad(net: nn.Module, w: dict, x, y) -> dict:
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    grads = torch.autograd.grad(official_loss(net, w, x, y), list(w.values()))
    return {k: g.detach() for k, g in zip(w, grads, strict=True)}


def norm(d: dict) -> torch.Tensor:
    return torch.sqrt(sum((v**2).sum() for v in d.values()))


def official_train(sam: bool) -> tuple[dict, list[float]]:
    """The official train_step, STEPS times; returns the weights and the pre-clip norms."""
    net = tiny_net()  # the same init as ours; its BN buffers are not compared
    w = {k: v.detach().clone() for k, v in net.named_parameters()}
    v = {k: torch.zeros_like(p) for k, p in w.items()}
    norms = []
    for t, (x, y) in enumerate(batches()):
        per_device = []
        for xs, ys in zip(x.split(M), y.split(M), strict=True):
            g = official_grad(net, w, xs, ys)
            if sam:
                n = norm(g)
                g = official_grad(net, {k: w[k] + RHO * g[k] / n for k in w}, xs, ys)
            per_device.append(g)
        g = {k: sum(d[k] for d in per_device) / len(per_device) for k in w}  # pmean
        gn = norm(g)
        norms.append(float(gn))
        if not gn < CLIP:
            g = {k: g[k] / gn * CLIP for k in g}
        lr = LR * (0.5 * math.cos(math.pi * t / TOTAL) + 0.5)
        for k in w:
            v[k] = 0.9 * v[k] + g[k]
            w[k] = w[k] - lr * (g[k] + 0.9 * v[k])
    return w, norms


def our_train(sam: bool, impl: str) -> dict:
    net = tiny_net()
    kw = dict(wd_mode="loss", max_grad_norm=CLIP, lr=LR, momentum=0.9, nesterov=True,
              weight_decay=LAM)
    opt = (SAM(net.parameters(), torch.optim.SGD, rho=RHO, **kw) if sam
           else Descent(net.parameters(), torch.optim.SGD, **kw))
    sched = cosine_schedule(opt, total_steps=TOTAL, steps_per_epoch=TOTAL)
    for x, y in batches():
        sam_step(net, opt, F.cross_entropy, x, y, m=M, shard_impl=impl)
        sched.step()
    return {k: v.detach() for k, v in net.named_parameters()}


@pytest.mark.parametrize("impl", ["loop", "vmap"])
@pytest.mark.parametrize("sam", [True, False], ids=["sam", "sgd"])
def test_steps_match_the_official_train_step(sam, impl):
    ref, norms = official_train(sam)
    assert min(norms) > CLIP  # the clip acted on every step
    ours = our_train(sam, impl)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=0, atol=1e-10), k
    start = {k: v.detach() for k, v in tiny_net().named_parameters()}
    assert max(float((ref[k] - start[k]).abs().max()) for k in ref) > 1e-3  # it moved


def test_clip_is_the_official_rule_without_epsilon():
    """where(||g|| < c, g, g / ||g|| * c): exact at and beyond the threshold, untouched
    below (torch's clip_grad_norm_ divides by ||g|| + 1e-6)."""
    from sam.optim.descent import clip_by_global_norm_

    for scale, expect in [(0.5, 0.5), (1.0, 1.0), (3.0, 1.0)]:
        g = [torch.tensor([3.0, 0.0], dtype=torch.float64) * scale,
             torch.tensor([[4.0]], dtype=torch.float64) * scale]  # ||g|| = 5 scale
        clip_by_global_norm_(g, 5.0)
        assert torch.equal(g[0], torch.tensor([3.0 * expect, 0.0], dtype=torch.float64))
        assert torch.equal(g[1], torch.tensor([[4.0 * expect]], dtype=torch.float64))


def test_descent_base_mode_is_the_base_optimizer():
    """wd_mode='base', no clip: Descent(SGD) steps exactly as torch.optim.SGD."""
    x, y = batches()[0]
    nets = [tiny_net(), tiny_net()]
    kw = dict(lr=LR, momentum=0.9, nesterov=True, weight_decay=LAM)
    opts = [torch.optim.SGD(nets[0].parameters(), **kw),
            Descent(nets[1].parameters(), torch.optim.SGD, **kw)]
    for net, opt in zip(nets, opts, strict=True):
        for _ in range(2):
            sam_step(net, opt, F.cross_entropy, x, y)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
