"""The training options of the fine-tuning / ImageNet recipes (docs/finetune.md), each
against a hand-derived float64 reference: label smoothing, no weight decay on 1-d
parameters, BatchNorm in eval mode, and the linear warmup of the cosine schedule."""

import math

import pytest
import torch
from helpers import settings_of
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from sam.errors import UserError
from sam.optim import SAM, Descent
from sam.results import comparable_config
from sam.train import (
    StepOptions,
    build_optimizer,
    cosine_schedule,
    evaluate,
    train_epoch,
    validate,
)
from sam.train.loop import training_loss


def make(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def loop_cfg(**extra):
    return StepOptions(**extra)


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, a: float) -> float:
    """(1/B) sum_i [(1 - a) (-log p_{i,y_i}) + a (1/K) sum_k (-log p_{i,k})], written out
    with log p = z - log sum exp z in Python floats."""
    total = 0.0
    for row, label in zip(logits.tolist(), y.tolist(), strict=True):
        lse = math.log(sum(math.exp(z) for z in row))
        neg_log_p = [lse - z for z in row]
        total += (1 - a) * neg_log_p[label] + a * sum(neg_log_p) / len(row)
    return total / len(y)


@pytest.mark.parametrize("a", [0.0, 0.1, 0.3])
def test_training_loss_is_the_label_smoothed_cross_entropy(a):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (7,), generator=g)
    assert training_loss(a)(logits, y).item() == pytest.approx(smoothed_ce(logits, y, a),
                                                                rel=1e-12)


def test_train_epoch_trains_on_the_smoothed_loss_and_evaluation_stays_plain_ce():
    """One SGD step (lr 0.5, no momentum) of a linear model W: the reported loss is the
    smoothed CE at W and W' = W - 0.5 (P - T)^T X / B with T = (1 - a) onehot + a / K."""
    a, lr, B, D, K = 0.2, 0.5, 6, 4, 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    model = nn.Linear(D, K, bias=False).double()
    w0 = model.weight.detach().clone()
    opt = Descent(model.parameters(), torch.optim.SGD, lr=lr, momentum=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    loss, _, seen = train_epoch(model, opt, sched, [(x, y)], loop_cfg(label_smoothing=a),
                                None, None, torch.device("cpu"), False)
    logits = x @ w0.T
    # the epoch meter sums losses in float32; the weights are float64
    assert seen == B and loss == pytest.approx(smoothed_ce(logits, y, a), rel=1e-6)
    assert abs(loss - smoothed_ce(logits, y, 0.0)) > 1e-3  # not the plain CE
    p = torch.softmax(logits, 1)
    t = (1 - a) * torch.nn.functional.one_hot(y, K).double() + a / K
    torch.testing.assert_close(model.weight.detach(), w0 - lr * (p - t).T @ x / B,
                               rtol=0, atol=1e-12)
    eval_loss, _ = evaluate(model, [(x, y)], None, torch.device("cpu"))
    # evaluate computes the CE of float32 logits
    assert eval_loss == pytest.approx(smoothed_ce(model(x).detach(), y, 0.0), rel=1e-6)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, bias=True), nn.BatchNorm2d(3), nn.Flatten(),
                         nn.Linear(12, 4), nn.LayerNorm(4)).double()


DECAYED = {"0.weight", "3.weight"}  # conv and dense kernels; biases and norm affines: 1-d


@pytest.mark.parametrize("fidelity", ["official", "pytorch"])  # wd_mode loss / base
@pytest.mark.parametrize("optim", ["sgd", "sam"])
def test_wd_exclude_norm_bias_decays_exactly_the_kernels(fidelity, optim):
    """Zero data gradient, lr 1, lam 0.1, no momentum (SAM with rho 0: w + eps = w): a
    kernel w becomes w - 0.1 w, a bias or norm parameter stays as it is (both weight-decay
    conventions)."""
    cfg = make(f"optim={optim}", f"fidelity={fidelity}", "wd_exclude_norm_bias=true",
               "lam=0.1", "lr=1.0", "optim.momentum=0.0", "optim.nesterov=false",
               "optim.max_grad_norm=null", "rho=0.0")
    net = small_net()
    opt = build_optimizer(settings_of(cfg), net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    if isinstance(opt, SAM):
        opt.first_step()  # eps = 0; the gradient at w + eps is the same zero data gradient
        opt.second_step()
    else:
        opt.step()
    for name, p in net.named_parameters():
        expected = before[name] * 0.9 if name in DECAYED else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15, msg=name)


def test_wd_exclude_norm_bias_off_keeps_one_group_and_keeps_sam_on_rho():
    net = small_net()
    plain = build_optimizer(settings_of(make("lam=0.1")), net)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["l2"] == 0.1
    opt = build_optimizer(settings_of(make("optim=sam_on", "rho=0.3", "lam=0.1",
                                           "wd_exclude_norm_bias=true")), net)
    norm_ids = {id(p) for m in (net[1], net[4]) for p in m.parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            assert group["rho"] == (0.3 if id(p) in norm_ids else 0.0)
            assert group["l2"] == (0.1 if p.ndim > 1 else 0.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_bn_eval_mode_normalises_with_running_statistics_and_keeps_them():
    """With bn_eval_mode the reported loss is the eval-mode loss at the initial weights
    and the running statistics do not move; without it, the train-mode loss."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randint(0, 4, (8,), generator=g)
    for on in (True, False):
        net = small_net()
        net[1].running_mean.fill_(0.5)
        net[1].running_var.fill_(2.0)
        stats = (net[1].running_mean.clone(), net[1].running_var.clone())
        net.train(not on)
        expected = torch.nn.functional.cross_entropy(net(x), y).item()
        net[1].running_mean.copy_(stats[0])
        net[1].running_var.copy_(stats[1])
        opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        loss, _, _ = train_epoch(net, opt, sched, [(x, y)], loop_cfg(bn_eval_mode=on), None,
                                 None, torch.device("cpu"), False)
        assert loss == pytest.approx(expected, rel=1e-6)  # the meter sums in float32
        assert torch.equal(net[1].running_mean, stats[0]) == on


def test_warmup_then_cosine_factors():
    """warmup 2 epochs x 5 steps, 50 steps: (s + 1)/10 for s < 10, then
    0.5 (1 + cos(pi (s - 10) / 40))."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = cosine_schedule(opt, total_steps=50, steps_per_epoch=5, warmup_epochs=2)
    lrs = []
    for _ in range(51):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    hand = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 20: 0.5 + 0.25 * math.sqrt(2), 30: 0.5, 50: 0.0}
    for step, factor in hand.items():
        assert lrs[step] == pytest.approx(2.0 * factor, abs=1e-12), step


@pytest.mark.parametrize("override", ["label_smoothing=1.0", "label_smoothing=-0.1",
                                      "wd_exclude_norm_bias=1", "bn_eval_mode=yes"])
def test_bad_values_are_one_line_user_errors(override):
    with pytest.raises(UserError, match=override.split("=")[0]):
        validate(make(override))


def test_old_runs_resume_with_the_new_keys_at_their_defaults():
    old = {k: v for k, v in OmegaConf.to_container(make()).items()
           if k not in ("label_smoothing", "wd_exclude_norm_bias", "bn_eval_mode")}
    new = comparable_config(OmegaConf.to_container(make()))
    assert comparable_config(old) == new
