"""SAM optimizer against independent float64 references written out by hand."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sam import SAM, sam_step

RHO, LR, MOM, WD = 0.05, 0.1, 0.9, 5e-4


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7), nn.Tanh(), nn.Dropout(dropout), nn.Linear(7, 3)]
    return nn.Sequential(*layers).double()


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def grad_at(model: nn.Module, w: dict, x, y) -> dict:
    """Reference gradient of the mean cross-entropy at parameters w (autograd, float64)."""
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    loss = F.cross_entropy(functional_call(model, w, (x,)), y)
    return dict(zip(w, torch.autograd.grad(loss, list(w.values())), strict=True))


def params_of(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def global_norm(d: dict) -> torch.Tensor:
    return torch.sqrt(sum((v**2).sum() for v in d.values()))


def nesterov_first_step(w: dict, g: dict, wd: float = WD) -> dict:
    """torch SGD(momentum, nesterov) first step: buf = d; w - lr (d + mom buf), d = g + wd w."""
    out = {}
    for k in w:
        d = g[k] + wd * w[k]
        out[k] = w[k] - LR * (d + MOM * d)
    return out


def make_sam(model: nn.Module, **kw) -> SAM:
    kw.setdefault("rho", RHO)
    return SAM(model.parameters(), torch.optim.SGD, lr=LR, momentum=MOM, nesterov=True,
               weight_decay=WD, **kw)


def two_step(model: nn.Module, opt: SAM, x, y) -> dict:
    """Run first_step; return the perturbed weights; leave the descent gradient."""
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    perturbed = params_of(model)
    F.cross_entropy(model(x), y).backward()
    return perturbed


@pytest.mark.parametrize("variant", ["p2", "pinf", "asam"])
def test_one_step_matches_hand_reference(variant: str) -> None:
    model, (x, y) = mlp(), batch()
    kw = {"p2": {}, "pinf": {"p": float("inf")}, "asam": {"adaptive": True, "rho": 0.5}}[variant]
    opt = make_sam(model, **kw)
    rho = opt.param_groups[0]["rho"]
    w0 = params_of(model)
    g = grad_at(model, w0, x, y)
    if variant == "p2":
        eps = {k: rho * g[k] / global_norm(g) for k in g}
    elif variant == "pinf":
        eps = {k: rho * torch.sign(g[k]) for k in g}
    else:
        t = {k: w0[k].abs() + 0.01 for k in w0}
        tg_norm = global_norm({k: t[k] * g[k] for k in g})
        eps = {k: rho * t[k] ** 2 * g[k] / tg_norm for k in g}
    perturbed = two_step(model, opt, x, y)
    for k in w0:
        torch.testing.assert_close(perturbed[k], w0[k] + eps[k], rtol=0, atol=1e-10)
    opt.unperturb()
    for k, p in model.named_parameters():
        assert torch.equal(p, w0[k]), "restore must be bit-identical to the saved weights"
    opt.second_step()
    g_adv = grad_at(model, {k: w0[k] + eps[k] for k in w0}, x, y)
    expected = nesterov_first_step(w0, g_adv)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)


def test_eps_norm_is_rho_over_all_groups() -> None:
    model, (x, y) = mlp(), batch()
    w = list(model.parameters())
    opt = SAM([{"params": w[:2]}, {"params": w[2:], "lr": 0.01}], torch.optim.SGD, rho=0.3, lr=LR)
    w0 = [p.detach().clone() for p in w]
    two_step(model, opt, x, y)
    eps_norm = torch.sqrt(sum(((p - p0) ** 2).sum() for p, p0 in zip(w, w0, strict=True)))
    assert abs(eps_norm.item() - 0.3) < 1e-12
    # per-group norms would each be 0.3; the global one splits it
    assert ((w[0] - w0[0]) ** 2).sum().sqrt() < 0.3 - 1e-3


def test_zero_gradient_gives_no_move_and_no_nan() -> None:
    model = mlp()
    opt = make_sam(model)
    w0 = params_of(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.first_step()
    for k, p in model.named_parameters():
        assert torch.equal(p, w0[k])
    opt_inf = make_sam(model, p=float("inf"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt_inf.first_step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.equal(p, w0[k]) for k, p in model.named_parameters())


def test_wd_mode_loss_matches_l2_in_the_loss() -> None:
    """Official convention: L2 term lambda/2 ||w||^2 inside the loss at both points."""
    model, (x, y) = mlp(), batch()
    opt = make_sam(model, wd_mode="loss")
    assert opt.param_groups[0]["weight_decay"] == 0
    w0 = params_of(model)
    g = grad_at(model, w0, x, y)
    g = {k: g[k] + WD * w0[k] for k in g}
    eps = {k: RHO * g[k] / global_norm(g) for k in g}
    w_adv = {k: w0[k] + eps[k] for k in w0}
    g_adv = grad_at(model, w_adv, x, y)
    g_adv = {k: g_adv[k] + WD * w_adv[k] for k in g_adv}
    expected = nesterov_first_step(w0, g_adv, wd=0.0)
    two_step(model, opt, x, y)
    opt.second_step()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)


def test_clipping_applies_to_descent_gradient() -> None:
    model, (x, y) = mlp(), batch()
    opt = make_sam(model, max_grad_norm=1e-3)
    w0 = params_of(model)
    g = grad_at(model, w0, x, y)
    eps = {k: RHO * g[k] / global_norm(g) for k in g}
    g_adv = grad_at(model, {k: w0[k] + eps[k] for k in w0}, x, y)
    n = global_norm(g_adv)
    assert n > 1e-3
    g_clip = {k: v / n * 1e-3 for k, v in g_adv.items()}  # the official rule: no epsilon
    expected = nesterov_first_step(w0, g_clip)
    two_step(model, opt, x, y)
    opt.second_step()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)


def test_closure_api_equals_two_step_api() -> None:
    (x, y) = batch()
    a, b = mlp(), mlp()
    opt_a, opt_b = make_sam(a), make_sam(b)
    for _ in range(3):
        two_step(a, opt_a, x, y)
        opt_a.second_step(zero_grad=True)

        def closure():
            loss = F.cross_entropy(b(x), y)
            loss.backward()
            return loss

        opt_b.step(closure)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_closure_api_with_model_equals_sam_step_batchnorm_and_dropout() -> None:
    """step(closure, model=...) keeps SAM's rules: BatchNorm statistics from the clean
    pass only, the same dropout masks at w and w + eps (as sam_step, tested above)."""
    x, y = image_batch()
    a = nn.Sequential(*bn_net(), nn.Dropout(0.5)).double()
    b = copy.deepcopy(a)
    opt_a, opt_b = make_sam(a), make_sam(b)
    for step in range(2):
        torch.manual_seed(step)
        sam_step(a, opt_a, F.cross_entropy, x, y)
        torch.manual_seed(step)
        opt_b.step(lambda: F.cross_entropy(b(x), y).backward(), model=b)
    for ta, tb in zip([*a.parameters(), *a.buffers()], [*b.parameters(), *b.buffers()],
                      strict=True):
        assert torch.equal(ta, tb)
    assert b[1].num_batches_tracked.item() == 2


class Router(nn.Module):
    """Routes through ``a`` in odd calls and ``b`` in even ones (as a mixture of experts
    whose gate flips between the clean and the perturbed pass)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 3).double(), nn.Linear(5, 3).double()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.a(x) if self.calls % 2 else self.b(x)


def test_restore_covers_exactly_what_the_ascent_moved() -> None:
    """a moves at the ascent but gets no gradient at w + eps; b only gets one there: with
    lr = 0 every weight must come back bit-identical, over several steps."""
    model, (x, y) = Router(), batch()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.0)
    for _ in range(3):
        sam_step(model, opt, F.cross_entropy, x, y)
        for p, w in zip(model.parameters(), w0, strict=True):
            assert torch.equal(p, w)


def test_wd_mode_loss_takes_each_groups_weight_decay() -> None:
    """Groups with lambda 0.1 (the default), 0 (own weight_decay) and 0.3 (added later):
    a zero data loss leaves only the L2 term, so the ascent is eps = rho l2 w / ||l2 w||
    (norm over all groups) and plain SGD (lr 1) moves w by -l2 (w + eps)."""
    torch.manual_seed(0)
    w1, w2, w3 = (nn.Parameter(torch.randn(n, dtype=torch.float64)) for n in (4, 3, 2))
    start = [w.detach().clone() for w in (w1, w2, w3)]
    opt = SAM([{"params": [w1]}, {"params": [w2], "weight_decay": 0.0}], torch.optim.SGD,
              rho=RHO, lr=1.0, weight_decay=0.1, wd_mode="loss")
    opt.add_param_group({"params": [w3], "weight_decay": 0.3})
    assert [g["weight_decay"] for g in opt.base_optimizer.param_groups] == [0.0, 0.0, 0.0]
    assert [g["l2"] for g in opt.param_groups] == [0.1, 0.0, 0.3]
    opt.step(lambda: (0.0 * (w1.sum() + w2.sum() + w3.sum())).backward())
    l2 = (0.1, 0.0, 0.3)
    norm = torch.sqrt(sum(((lam * w) ** 2).sum() for lam, w in zip(l2, start, strict=True)))
    for lam, w, w_start in zip(l2, (w1, w2, w3), start, strict=True):
        eps = RHO * lam * w_start / norm
        expected = w_start - lam * (w_start + eps)
        torch.testing.assert_close(w.detach(), expected, rtol=1e-13, atol=1e-14)
    assert torch.equal(w2.detach(), start[1])


def test_linf_ascent_turns_an_overflow_into_a_non_finite_step() -> None:
    """p = inf: sign(inf) is finite, but an overflowed clean gradient must still make
    the perturbed point (hence the descent gradient) non-finite, as with p = 2, so that a
    GradScaler skips the step; the restore stays exact."""
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    opt = SAM([w], torch.optim.SGD, rho=RHO, p=math.inf, lr=0.1)
    w.grad = torch.tensor([float("inf"), 1.0, -1.0])
    opt.first_step()
    assert torch.isnan(w[0]) and torch.equal(w.detach()[1:], torch.tensor([2.05, 2.95]))
    opt.unperturb()
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0, 3.0]))


class _WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.aux = mlp(), nn.Linear(2, 2).double()  # aux: never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_sgd_shards_leave_an_unused_parameter_without_gradient() -> None:
    """As the one-pass path and an unsharded step: grad None, so weight decay and momentum
    leave it alone (a zero gradient would decay it)."""
    model, (x, y) = _WithUnusedLayer(), batch()
    aux0 = model.aux.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM, weight_decay=WD)
    sam_step(model, opt, F.cross_entropy, x, y, m=2, shard_impl="loop")
    assert model.aux.weight.grad is None and torch.equal(model.aux.weight, aux0)


def test_sam_shards_treat_an_unused_parameter_alike_in_loop_and_vmap() -> None:
    """m=auto picks the loop on CPU and vmap on CUDA: one config must train the same way."""
    models = {impl: _WithUnusedLayer() for impl in ("loop", "vmap")}
    x, y = batch()
    for impl, model in models.items():
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOM,
                  weight_decay=WD)
        sam_step(model, opt, F.cross_entropy, x, y, m=2, shard_impl=impl)
    torch.testing.assert_close(models["loop"].aux.weight, models["vmap"].aux.weight,
                               rtol=0, atol=1e-15)


def test_a_failed_ascent_leaves_the_weights_at_w_and_nothing_to_restore_later() -> None:
    model, (x, y) = mlp(), batch()
    w0 = params_of(model)
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = SAM([{"params": first}, {"params": second, "adaptive": True}], torch.optim.SGD,
              rho=RHO, lr=LR)
    F.cross_entropy(model(x), y).backward()

    def broken(group, params):
        raise RuntimeError("injected")

    opt._scales = broken  # the second group fails after the first one has moved
    with pytest.raises(RuntimeError, match="injected"):
        opt.first_step()
    assert all(torch.equal(p, w0[k]) for k, p in model.named_parameters())
    assert not opt.perturbed and opt._moved == []


def shard_reference(model: nn.Module, x, y, m: int) -> dict:
    """Explicit per-shard loop: mean over shards of grad L_i(w + rho g_i/||g_i||)."""
    w0 = params_of(model)
    total = {k: torch.zeros_like(v) for k, v in w0.items()}
    shards = x.shape[0] // m
    for i in range(shards):
        xs, ys = x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]
        g = grad_at(model, w0, xs, ys)
        n = global_norm(g)
        h = grad_at(model, {k: w0[k] + RHO * g[k] / n for k in w0}, xs, ys)
        for k in total:
            total[k] += h[k] / shards
    return nesterov_first_step(w0, total)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_m_sharpness_equals_loop_over_shards(m: int) -> None:
    model, (x, y) = mlp(), batch(8)
    expected = shard_reference(model, x, y, m)
    sam_step(model, make_sam(model), F.cross_entropy, x, y, m=m)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)


def test_m_equal_batch_is_plain_sam() -> None:
    (x, y) = batch(8)
    a, b = mlp(), mlp()
    sam_step(a, make_sam(a), F.cross_entropy, x, y, m=8)
    sam_step(b, make_sam(b), F.cross_entropy, x, y)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_m_must_divide_batch() -> None:
    model, (x, y) = mlp(), batch(8)
    with pytest.raises(ValueError, match="divide"):
        sam_step(model, make_sam(model), F.cross_entropy, x, y, m=3)


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).double()


def image_batch(n: int = 8):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def test_batchnorm_stats_only_from_clean_pass() -> None:
    model, (x, y) = bn_net(), image_batch()
    reference = copy.deepcopy(model)
    reference(x)  # one clean forward in train mode
    sam_step(model, make_sam(model), F.cross_entropy, x, y)
    bn, ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 1


def test_batchnorm_perturbed_pass_uses_batch_statistics() -> None:
    """The descent gradient must equal the one of a train-mode (batch stats) forward."""
    model, (x, y) = bn_net(), image_batch()
    w0 = params_of(model)
    g = grad_at(copy.deepcopy(model), w0, x, y)
    eps = {k: RHO * g[k] / global_norm(g) for k in g}
    g_adv = grad_at(copy.deepcopy(model), {k: w0[k] + eps[k] for k in w0}, x, y)
    expected = nesterov_first_step(w0, g_adv)
    sam_step(model, make_sam(model), F.cross_entropy, x, y)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)


def test_batchnorm_stats_with_shards_are_the_shard_mean() -> None:
    model, (x, y) = bn_net(), image_batch(8)
    means, vars_ = [], []
    for xs in x.split(2):
        ref = copy.deepcopy(model)
        ref(xs)
        means.append(ref[1].running_mean)
        vars_.append(ref[1].running_var)
    sam_step(model, make_sam(model), F.cross_entropy, x, y, m=2)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0), rtol=0, atol=1e-14)
    assert bn.num_batches_tracked.item() == 1


def test_dropout_masks_identical_in_both_passes() -> None:
    model, (x, y) = mlp(dropout=0.5), batch(16)
    masks = []
    model[2].register_forward_hook(lambda mod, inp, out: masks.append(out == 0))
    sam_step(model, make_sam(model), F.cross_entropy, x, y)
    assert len(masks) == 2
    assert masks[0].any() and torch.equal(masks[0], masks[1])


def test_state_dict_round_trip_resumes_exactly() -> None:
    x, y = batch(16)

    def run(steps, model, opt, sched, start=0):
        for i in range(start, start + steps):
            xb, yb = x[(i % 2) * 8:(i % 2 + 1) * 8], y[(i % 2) * 8:(i % 2 + 1) * 8]
            sam_step(model, opt, F.cross_entropy, xb, yb)
            sched.step()

    def fresh():
        model = mlp()
        opt = make_sam(model)
        return model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)

    full = fresh()
    run(6, *full)
    part = fresh()
    run(3, *part)
    saved = copy.deepcopy({"model": part[0].state_dict(), "opt": part[1].state_dict(),
                           "sched": part[2].state_dict()})
    resumed = fresh()
    resumed[0].load_state_dict(saved["model"])
    resumed[1].load_state_dict(saved["opt"])
    resumed[2].load_state_dict(saved["sched"])
    assert resumed[1].param_groups is resumed[1].base_optimizer.param_groups
    run(3, *resumed, start=3)
    for pa, pb in zip(full[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_scheduler_on_sam_drives_base_lr() -> None:
    model = mlp()
    opt = make_sam(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batch()
    sam_step(model, opt, F.cross_entropy, x, y)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(LR * 0.5)


def test_sam_step_with_sgd_is_plain_sgd() -> None:
    model, (x, y) = mlp(), batch()
    w0 = params_of(model)
    g = grad_at(model, w0, x, y)
    expected = nesterov_first_step(w0, g)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM, nesterov=True, weight_decay=WD)
    loss = sam_step(model, opt, F.cross_entropy, x, y)
    assert loss.shape == ()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["vmap", "loop"])  # vmap: one pass (ghost_batchnorm)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("m", [2, 4, 8])
def test_sgd_with_shards_is_ghost_batchnorm_data_parallel(m: int, channels_last: bool,
                                                          impl: str) -> None:
    """SGD with m < B: k = B/m accelerators of m examples without synchronised BatchNorm.
    Reference: each shard on its own copy from the same start (float64 autograd), the
    gradients and BN running statistics averaged, then the Nesterov step by hand; m = B
    is plain SGD."""
    model, (x, y) = bn_net(), image_batch(8)
    w0 = params_of(model)
    grads, means, vars_ = [], [], []
    for xs, ys in zip(x.split(m), y.split(m), strict=True):
        ref = copy.deepcopy(model)
        F.cross_entropy(ref(xs), ys).backward()
        grads.append({k: p.grad for k, p in ref.named_parameters()})
        means.append(ref[1].running_mean)
        vars_.append(ref[1].running_var)
    g = {k: torch.stack([gi[k] for gi in grads]).mean(0) for k in w0}
    expected = nesterov_first_step(w0, g)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM, nesterov=True, weight_decay=WD)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sam_step(model, opt, F.cross_entropy, x, y, m=m, shard_impl=impl)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-12)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0), rtol=0, atol=1e-14)
    assert bn.num_batches_tracked.item() == 1


def float_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def test_grad_scaler_matches_unscaled_and_skips_nonfinite() -> None:
    x, y = batch()
    x = x.float()
    a, b = float_net(), float_net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sam_step(a, make_sam(a), F.cross_entropy, x, y, scaler=scaler)
    sam_step(b, make_sam(b), F.cross_entropy, x, y)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    w_before = [p.detach().clone() for p in a.parameters()]
    scale_before = scaler.get_scale()
    bad = x.clone()
    bad[0, 0] = float("inf")
    sam_step(a, make_sam(a), F.cross_entropy, bad, y, scaler=scaler)
    for p, w in zip(a.parameters(), w_before, strict=True):
        assert torch.equal(p, w), "a non-finite step must leave the weights untouched"
    assert scaler.get_scale() < scale_before


def relative_update_gap(a: nn.Module, b: nn.Module, w0: list[torch.Tensor]) -> float:
    """|update_a - update_b| / |update_b| for two models stepped from the weights w0."""
    da = torch.cat([(p - q).flatten() for p, q in zip(a.parameters(), w0, strict=True)])
    db = torch.cat([(p - q).flatten() for p, q in zip(b.parameters(), w0, strict=True)])
    assert db.norm() > 0
    return ((da - db).norm() / db.norm()).item()


def test_bf16_autocast_step_is_close_to_fp32() -> None:
    x, y = batch()
    x = x.float()
    a, b = float_net(), float_net()
    w0 = [p.detach().clone() for p in a.parameters()]
    loss = sam_step(a, make_sam(a), F.cross_entropy, x, y, amp_dtype=torch.bfloat16)
    sam_step(b, make_sam(b), F.cross_entropy, x, y)
    assert math.isfinite(loss.item())
    # bf16 keeps ~3 significant digits; ReLU boundary flips add a few percent more
    assert relative_update_gap(a, b, w0) < 0.2


@pytest.mark.parametrize("impl", ["loop", "vmap"])
def test_bf16_autocast_shards_with_batchnorm_are_close_to_fp32(impl: str) -> None:
    """m-sharpness under bf16 autocast: vmap's per-shard BatchNorm statistics take
    float32 inputs (its batching rule rejects bf16 beside float32 statistics)."""
    a, (x, y) = bn_net().float(), image_batch(8)
    b, x = copy.deepcopy(a), x.float()
    w0 = [p.detach().clone() for p in a.parameters()]
    loss = sam_step(a, make_sam(a), F.cross_entropy, x, y, m=2, amp_dtype=torch.bfloat16,
                    shard_impl=impl)
    sam_step(b, make_sam(b), F.cross_entropy, x, y, m=2, shard_impl="loop")
    assert math.isfinite(loss.item())
    assert relative_update_gap(a, b, w0) < 0.2
    for ba, bb in zip(a.buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(ba.float(), bb.float(), rtol=0.05, atol=0.01)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_vmap_shards_equal_loop_over_shards(m: int) -> None:
    model, (x, y) = mlp(), batch(8)
    expected = shard_reference(model, x, y, m)
    sam_step(model, make_sam(model), F.cross_entropy, x, y, m=m, shard_impl="vmap")
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)


class _ReadsAValue(nn.Module):
    """A layer vmap cannot batch: it reads a tensor's value in Python (.item())."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.abs().max().item() > 1e9 else x


def test_auto_shards_fall_back_to_the_loop_when_vmap_cannot_batch_a_layer() -> None:
    """auto picks vmap for 64 one-example shards on CPU; the .item() layer makes it fail,
    so the step warns once and runs the loop: the same result as the loop from the start
    (nothing was changed by the failed attempt)."""
    a = nn.Sequential(nn.Linear(5, 16), _ReadsAValue(), nn.Tanh(), nn.Linear(16, 3)).double()
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    (x, y), opt_a, opt_b = batch(64), make_sam(a), make_sam(b)
    with pytest.warns(UserWarning, match="vmap failed"):
        sam_step(a, opt_a, F.cross_entropy, x, y, m=1, shard_impl="auto")
    sam_step(b, opt_b, F.cross_entropy, x, y, m=1, shard_impl="loop")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later steps go straight to the loop
        sam_step(a, opt_a, F.cross_entropy, x, y, m=1, shard_impl="auto")
    with pytest.raises(RuntimeError):  # asked for by name, vmap's failure is the user's
        sam_step(c, make_sam(c), F.cross_entropy, x, y, m=1, shard_impl="vmap")


@pytest.mark.parametrize("kw", [{}, {"adaptive": True}, {"p": float("inf")},
                                {"wd_mode": "loss"}])
def test_vmap_shards_match_loop_with_batchnorm(kw: dict) -> None:
    a, (x, y) = bn_net(), image_batch(8)
    b = copy.deepcopy(a)
    loss_a = sam_step(a, make_sam(a, **kw), F.cross_entropy, x, y, m=2, shard_impl="loop")
    loss_b = sam_step(b, make_sam(b, **kw), F.cross_entropy, x, y, m=2, shard_impl="vmap")
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-12)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)
    for ba, bb in zip(a.buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, rtol=0, atol=1e-14)


@pytest.mark.parametrize("impl, m", [("loop", None), ("loop", 2), ("vmap", 2), ("vmap", 1)])
def test_perturbed_pass_sees_the_clean_pass_dropout_mask(impl: str, m: int | None) -> None:
    """L = mean_j w * drop(x_j) with one weight: grad = L / w at every point. With rho = 0
    the descent gradient equals the clean one iff both passes drew the same masks, so
    plain SGD must land on w - lr L / w exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(1, 1, bias=False)).double()
    x = torch.rand(8, 1, dtype=torch.float64) + 1.0
    w0 = model[1].weight.detach().clone()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)
    loss = sam_step(model, opt, lambda out, y: out.mean(), x, torch.zeros(8), m=m,
                    shard_impl=impl)
    assert loss.item() != 0 and abs(loss.item() - (w0 * x.mean()).item()) > 1e-3, \
        "dropout must be active"
    torch.testing.assert_close(model[1].weight.detach(), w0 - 0.1 * loss / w0, rtol=0,
                               atol=1e-14)


def test_vmap_shards_with_channels_last_model_match_loop() -> None:
    a, (x, y) = bn_net(), image_batch(8)
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    sam_step(a, make_sam(a), F.cross_entropy, x, y, m=2, shard_impl="loop")
    xb = x.contiguous(memory_format=torch.channels_last)
    sam_step(b, make_sam(b), F.cross_entropy, xb, y, m=2, shard_impl="vmap")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


def test_compiled_model_takes_the_same_sam_step() -> None:
    """compile=true (torch.compile, inductor; on CPU here) keeps SAM's semantics: the step
    of a compiled BN net matches the float64 hand reference, its BN statistics come from the
    clean pass only, and both passes of a compiled dropout net draw the same mask (the
    one-weight check: with rho = 0 SGD must land on w - lr L / w)."""
    model, (x, y) = bn_net(), image_batch()
    reference = copy.deepcopy(model)
    w0 = params_of(model)
    g = grad_at(copy.deepcopy(model), w0, x, y)
    eps = {k: RHO * g[k] / global_norm(g) for k in g}
    expected = nesterov_first_step(w0, grad_at(copy.deepcopy(model),
                                               {k: w0[k] + eps[k] for k in w0}, x, y))
    reference(x)  # one clean forward: the BN statistics SAM must end with
    sam_step(torch.compile(model), make_sam(model), F.cross_entropy, x, y)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-10)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean, rtol=0,
                               atol=1e-14)
    # m-sharpness batched with vmap runs the compiled model's eager module: same as the loop
    a, b = bn_net(), bn_net()
    sam_step(a, make_sam(a), F.cross_entropy, x, y, m=2, shard_impl="loop")
    sam_step(torch.compile(b), make_sam(b), F.cross_entropy, x, y, m=2, shard_impl="vmap")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)

    torch.manual_seed(0)
    drop = nn.Sequential(nn.Dropout(0.5), nn.Linear(1, 1, bias=False)).double()
    x1 = torch.rand(8, 1, dtype=torch.float64) + 1.0
    w = drop[1].weight.detach().clone()
    opt = SAM(drop.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)
    loss = sam_step(torch.compile(drop), opt, lambda out, _: out.mean(), x1, torch.zeros(8))
    assert abs(loss.item() - (w * x1.mean()).item()) > 1e-3, "dropout must be active"
    torch.testing.assert_close(drop[1].weight.detach(), w - 0.1 * loss / w, rtol=0, atol=1e-14)
