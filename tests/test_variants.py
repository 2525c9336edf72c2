"""SAM's ablations and variants against float64 references written out by hand from the
papers' formulas (docs/variants.md), never from sam.optim: ascent_steps, second_order,
ascent=random (Foret et al. App. C), GSAM, LookSAM and SAM-ON's per-group rho."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sam.optim import GSAM, SAM, LookSAM, param_groups, sam_step

RHO, LR, L2 = 0.3, 0.1, 0.01


def mlp(seed: int = 0, norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    mid = [nn.LayerNorm(6)] if norm else []
    return nn.Sequential(nn.Linear(4, 6), *mid, nn.Tanh(), nn.Linear(6, 3)).double()


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g))


def loss_at(model: nn.Module, w: dict, x, y, l2: float = 0.0) -> torch.Tensor:
    """L_t(w) = mean cross-entropy + l2/2 ||w||^2 (differentiable in w)."""
    reg = 0.5 * l2 * sum((v ** 2).sum() for v in w.values())
    return F.cross_entropy(functional_call(model, w, (x,)), y) + reg


def grad_at(model: nn.Module, w: dict, x, y, l2: float = 0.0) -> dict:
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    return dict(zip(w, torch.autograd.grad(loss_at(model, w, x, y, l2), list(w.values())),
                    strict=True))


def params_of(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def norm(d: dict, keys=None) -> torch.Tensor:
    return torch.sqrt(sum((d[k] ** 2).sum() for k in (keys or d)))


def dot(a: dict, b: dict) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def sgd(model: nn.Module, opt_cls=SAM, l2: float = 0.0, params=None, **kw):
    """The optimizer on plain SGD (w <- w - lr d), L2 in the loss when l2 > 0."""
    kw.setdefault("rho", RHO)
    return opt_cls(params if params is not None else model.parameters(), torch.optim.SGD,
                   lr=LR, wd_mode="loss", weight_decay=l2, **kw)


def assert_sgd_step(model: nn.Module, w0: dict, d: dict) -> None:
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w0[k] - LR * d[k], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- paper ablations


def multistep_reference(model, w0, x, y, k: int, l2: float) -> dict:
    """C.6 as docs/variants.md states it: delta <- Pi(delta + a/||a||), Pi onto the unit
    ball, eps = rho delta; descent gradient at w + eps."""
    delta = {n: torch.zeros_like(v) for n, v in w0.items()}
    for _ in range(k):
        a = grad_at(model, {n: w0[n] + RHO * delta[n] for n in w0}, x, y, l2)
        delta = {n: delta[n] + a[n] / norm(a) for n in w0}
        shrink = max(1.0, float(norm(delta)))
        delta = {n: delta[n] / shrink for n in w0}
    return grad_at(model, {n: w0[n] + RHO * delta[n] for n in w0}, x, y, l2)


@pytest.mark.parametrize("k, l2", [(1, 0.0), (2, 0.0), (4, L2)])
def test_ascent_steps_is_projected_normalized_ascent(k: int, l2: float) -> None:
    model, (x, y) = mlp(), batch()
    w0 = params_of(model)
    expected = multistep_reference(model, w0, x, y, k, l2)
    sam_step(model, sgd(model, l2=l2, ascent_steps=k), F.cross_entropy, x, y)
    assert_sgd_step(model, w0, expected)


def test_ascent_steps_one_is_plain_sam() -> None:
    a, b = mlp(), mlp()
    x, y = batch()
    sam_step(a, sgd(a, ascent_steps=1), F.cross_entropy, x, y)
    sam_step(b, sgd(b), F.cross_entropy, x, y)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def exact_sam_gradient(model, w0, x, y, l2: float, rhos: dict | None = None) -> dict:
    """grad_w L_t(w + eps(w)), eps = D a(w)/||a(w)||_P, by autograd THROUGH eps."""
    rhos = rhos or dict.fromkeys(w0, RHO)
    w = {n: v.clone().requires_grad_(True) for n, v in w0.items()}
    a = torch.autograd.grad(loss_at(model, w, x, y, l2), list(w.values()), create_graph=True)
    a = dict(zip(w, a, strict=True))
    n = torch.sqrt(sum((a[k] ** 2).sum() for k in w if rhos[k]))
    moved = {k: w[k] + rhos[k] * a[k] / n for k in w}
    out = torch.autograd.grad(loss_at(model, moved, x, y, l2), list(w.values()))
    return dict(zip(w, out, strict=True))


@pytest.mark.parametrize("l2", [0.0, L2])
def test_second_order_is_the_exact_gradient_of_the_sam_loss(l2: float) -> None:
    model, (x, y) = mlp(), batch()
    w0 = params_of(model)
    expected = exact_sam_gradient(model, w0, x, y, l2)
    first_order = grad_at(model, {k: w0[k] + RHO * v / norm(grad_at(model, w0, x, y, l2))
                                  for k, v in grad_at(model, w0, x, y, l2).items()}, x, y, l2)
    assert norm({k: expected[k] - first_order[k] for k in w0}) > 1e-3  # the term matters
    sam_step(model, sgd(model, l2=l2, second_order=True), F.cross_entropy, x, y)
    assert_sgd_step(model, w0, expected)


def test_second_order_with_per_group_rho_and_shards() -> None:
    """SAM-ON groups (rho only on the LayerNorm) and m-sharpness: per shard exact."""
    model, (x, y) = mlp(norm=True), batch()
    w0 = params_of(model)
    rhos = {k: (RHO if k.startswith("1.") else 0.0) for k in w0}  # "1." is the LayerNorm
    expected = {k: torch.zeros_like(v) for k, v in w0.items()}
    for xs, ys in zip(x.split(4), y.split(4), strict=True):
        g = exact_sam_gradient(model, w0, xs, ys, L2, rhos)
        expected = {k: expected[k] + g[k] / 2 for k in w0}
    opt = sgd(model, l2=L2, params=param_groups(model, RHO, "norm"), second_order=True)
    sam_step(model, opt, F.cross_entropy, x, y, m=4)
    assert_sgd_step(model, w0, expected)


def test_random_ascent_has_norm_rho_ignores_the_gradient_and_resumes_exactly() -> None:
    model, (x, y) = mlp(), batch()
    w0 = params_of(model)
    opt = sgd(model, ascent="random", seed=7)
    seen = []

    def record(_module, _inputs, _output):  # the perturbed pass sees w + eps
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
    model[0].register_forward_hook(record)
    sam_step(model, opt, F.cross_entropy, x, y)
    eps = {k: seen[1][k] - w0[k] for k in w0}
    assert abs(float(norm(eps)) - RHO) < 1e-12
    g = grad_at(model, w0, x, y)
    cosine = dot(eps, g) / (norm(eps) * norm(g))
    assert abs(float(cosine)) < 0.9  # not the gradient direction
    # the documented draw: z ~ N(0, I) from a generator seeded (seed * 1000003 + draw)
    gen = torch.Generator().manual_seed(7 * 1_000_003)
    z = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in w0.items()}
    for k in w0:
        torch.testing.assert_close(eps[k], RHO * z[k] / norm(z), rtol=0, atol=1e-12)
    # resume: a fresh optimizer loaded from the state dict draws the next eps, not the first
    state = opt.state_dict()
    twin = mlp()
    twin.load_state_dict(model.state_dict())
    resumed = sgd(twin, ascent="random", seed=7)
    resumed.load_state_dict(state)
    sam_step(model, opt, F.cross_entropy, x, y)
    sam_step(twin, resumed, F.cross_entropy, x, y)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(seen[3]["0.weight"] - seen[2]["0.weight"], eps["0.weight"])


@pytest.mark.parametrize("kw", [{"ascent_steps": 2, "second_order": True},
                                {"ascent": "random", "p": math.inf},
                                {"second_order": True, "adaptive": True},
                                {"ascent": "sideways"}, {"ascent_steps": 0}])
def test_ablations_refuse_what_they_do_not_define(kw: dict) -> None:
    with pytest.raises(ValueError):
        sgd(mlp(), **kw)


# ---------------------------------------------------------------- GSAM


def gsam_reference(model, w0, x, y, rho: float, alpha: float, l2: float) -> dict:
    """Zhuang et al. Alg. 1: eps = rho g/||g||, g_p at w + eps, d = g_p - alpha g_perp,
    g_perp = g - (<g, g_p>/||g_p||^2) g_p."""
    g = grad_at(model, w0, x, y, l2)
    gp = grad_at(model, {k: w0[k] + rho * g[k] / norm(g) for k in w0}, x, y, l2)
    coef = dot(g, gp) / norm(gp) ** 2
    return {k: gp[k] - alpha * (g[k] - coef * gp[k]) for k in w0}


@pytest.mark.parametrize("l2", [0.0, L2])
def test_gsam_descends_along_gp_minus_alpha_g_perp(l2: float) -> None:
    model, (x, y) = mlp(), batch()
    w0 = params_of(model)
    expected = gsam_reference(model, w0, x, y, RHO, 0.5, l2)
    sam_step(model, sgd(model, GSAM, l2=l2, alpha=0.5), F.cross_entropy, x, y)
    assert_sgd_step(model, w0, expected)


def test_gsam_rho_follows_the_lr_and_shards_decompose_each_their_own() -> None:
    """rho_t = rho_min + (rho_max - rho_min)(lr_t - lr_min)/(lr_max - lr_min), lr_t =
    0.25 lr_max here; with m=4 each shard takes its own d, then the mean."""
    model, (x, y) = mlp(), batch()
    opt = sgd(model, GSAM, alpha=0.3, rho_min=0.1)
    for group in opt.param_groups:
        group["lr"] = 0.25 * LR
    rho_t = 0.1 + (RHO - 0.1) * 0.25
    w0 = params_of(model)
    d = {k: torch.zeros_like(v) for k, v in w0.items()}
    for xs, ys in zip(x.split(4), y.split(4), strict=True):
        part = gsam_reference(model, w0, xs, ys, rho_t, 0.3, 0.0)
        d = {k: d[k] + part[k] / 2 for k in w0}
    sam_step(model, opt, F.cross_entropy, x, y, m=4)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w0[k] - 0.25 * LR * d[k], rtol=0, atol=1e-12)


def test_gsam_rho_schedule_is_the_authors_unclamped_map_through_warmup_and_cosine() -> None:
    """The authors' ProportionScheduler (gsam/scheduler.py): rho_t = rho_min + (rho_max -
    rho_min)(lr_t - lr_min)/(lr_max - lr_min), not clamped, on our cosine with a 4-step
    warmup over 8 steps: lr_t = 0.1 x (1/4, 2/4, 3/4, 1, 1, 0.853553, 0.5, 0.146447).
    rho 0.3 -> 0.1 at lr_min 0.03: below rho_min at the warmup's first step and the last
    (lr_t < lr_min), values worked out by hand; step 0 moves w as SAM with that rho."""
    from sam.train import cosine_schedule

    model = mlp()
    opt = sgd(model, GSAM, alpha=0.0, rho_min=0.1, lr_min=0.03)
    schedule = cosine_schedule(opt, total_steps=8, steps_per_epoch=2, warmup_epochs=2)
    by_hand = [0.0857143, 0.157143, 0.228571, 0.3, 0.3, 0.258158, 0.157143, 0.0561277]
    for step, rho_t in enumerate(by_hand):
        x, y = batch(seed=step)
        w0 = params_of(model)
        sam_step(model, opt, F.cross_entropy, x, y)
        assert opt.param_groups[0]["rho"] == pytest.approx(rho_t, abs=1e-6), step
        if step == 0:  # eps = 0.0857143 g/||g||, then w - 0.025 g_p
            d = gsam_reference(model, w0, x, y, 0.0857143, 0.0, 0.0)
            for k, p in model.named_parameters():
                torch.testing.assert_close(p.detach(), w0[k] - 0.025 * d[k], rtol=0,
                                           atol=1e-7)
        schedule.step()


def test_gsam_refuses_an_lr_min_that_turns_rho_negative() -> None:
    """lr_min/lr > rho_min/rho makes rho_t < 0 where the lr nears 0: refused in one line;
    lr_min >= lr (no room for the map): refused, as the authors' assert."""
    from helpers import compose_train, settings_of

    from sam.errors import UserError

    settings_of(compose_train("optim=gsam", "optim.rho_min=0.01", "optim.lr_min=0.02"))
    with pytest.raises(UserError, match="optim.lr_min=0.05: GSAM's rho_t .* negative"):
        settings_of(compose_train("optim=gsam", "optim.rho_min=0.01", "optim.lr_min=0.05"))
    with pytest.raises(UserError, match="optim.lr_min=0.2 >= lr=0.1"):
        settings_of(compose_train("optim=gsam", "rho=0.1", "optim.rho_min=0.05",
                                 "optim.lr_min=0.2"))
    with pytest.raises(ValueError, match="lr_min"):
        sgd(mlp(), GSAM, rho_min=0.1, lr_min=LR)


# ---------------------------------------------------------------- LookSAM


def test_looksam_reuses_the_orthogonal_component_between_sam_steps() -> None:
    """k=2: step 0 SAM (keeps g_v), step 1 g + alpha ||g||/||g_v|| g_v, step 2 SAM."""
    model, (x, y) = mlp(), batch()
    batches = [batch(seed=s) for s in (1, 2, 3)]
    opt = sgd(model, LookSAM, l2=L2, k=2, alpha=0.7)
    w = params_of(model)
    g_v, calls = None, []
    model[0].register_forward_hook(lambda *_: calls.append(1))
    for t, (x, y) in enumerate(batches):
        g = grad_at(model, w, x, y, L2)
        if t % 2 == 0:
            gs = grad_at(model, {k: w[k] + RHO * g[k] / norm(g) for k in w}, x, y, L2)
            g_v = {k: gs[k] - dot(gs, g) / norm(g) ** 2 * g[k] for k in w}
            d = gs
        else:
            d = {k: g[k] + 0.7 * norm(g) / norm(g_v) * g_v[k] for k in w}
        calls.clear()
        sam_step(model, opt, F.cross_entropy, x, y)
        assert len(calls) == (2 if t % 2 == 0 else 1)  # its point: one pass between
        assert_sgd_step(model, w, d)
        w = params_of(model)


def test_looksam_state_survives_a_checkpoint() -> None:
    """g_v and the step count are in state_dict: a resumed run takes the same steps."""
    a, b = mlp(), mlp()
    opt_a = sgd(a, LookSAM, k=3)
    sam_step(a, opt_a, F.cross_entropy, *batch(seed=1))
    b.load_state_dict(a.state_dict())
    opt_b = sgd(b, LookSAM, k=3)
    opt_b.load_state_dict(opt_a.state_dict())
    for seed in (2, 3, 4):  # reuse, reuse, SAM
        sam_step(a, opt_a, F.cross_entropy, *batch(seed=seed))
        sam_step(b, opt_b, F.cross_entropy, *batch(seed=seed))
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    assert opt_b.param_groups[0]["looksam_step"] == 4


def test_looksam_refuses_shards_and_a_grad_scaler() -> None:
    model, (x, y) = mlp(), batch()
    with pytest.raises(ValueError, match="shards"):
        sam_step(model, sgd(model, LookSAM), F.cross_entropy, x, y, m=4)
    with pytest.raises(ValueError, match="GradScaler"):
        sam_step(model, sgd(model, LookSAM), F.cross_entropy, x, y,
                 scaler=torch.amp.GradScaler("cpu"))


def test_variants_refuse_batched_shards_by_name() -> None:
    model, (x, y) = mlp(), batch()
    for opt in (sgd(model, GSAM), sgd(model, ascent_steps=2)):
        with pytest.raises(ValueError, match="loop"):
            sam_step(model, opt, F.cross_entropy, x, y, m=4, shard_impl="vmap")


# ---------------------------------------------------------------- SAM-ON


@pytest.mark.parametrize("impl", ["loop", "vmap"])
def test_sam_on_perturbs_only_normalization_layers_with_their_own_norm(impl: str) -> None:
    """Mueller et al.: eps_i = rho g_i/||g_N|| on the norm layers N, 0 elsewhere; every
    parameter descends. Also per shard (m=4), in the loop and batched with vmap."""
    model, (x, y) = mlp(norm=True), batch()
    w0 = params_of(model)
    on = [k for k in w0 if k.startswith("1.")]
    d = {k: torch.zeros_like(v) for k, v in w0.items()}
    for xs, ys in zip(x.split(4), y.split(4), strict=True):
        g = grad_at(model, w0, xs, ys, L2)
        n = norm(g, on)
        h = grad_at(model, {k: w0[k] + (RHO * g[k] / n if k in on else 0) for k in w0},
                    xs, ys, L2)
        d = {k: d[k] + h[k] / 2 for k in w0}
    opt = sgd(model, l2=L2, params=param_groups(model, RHO, "norm"))
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]
    sam_step(model, opt, F.cross_entropy, x, y, m=4, shard_impl=impl)
    assert_sgd_step(model, w0, d)


def test_param_groups_no_norm_is_the_reverse_and_a_model_without_norm_is_refused() -> None:
    model = mlp(norm=True)
    groups = param_groups(model, 0.5, "no_norm")
    assert [g["rho"] for g in groups] == [0.5, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model[1].parameters()}
    with pytest.raises(ValueError, match="no normalization layer"):
        param_groups(mlp(), 0.5, "norm")


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("opt_cls, kw", [(GSAM, {"alpha": 0.5}), (SAM, {"ascent_steps": 3}),
                                         (SAM, {"ascent": "random"})])
def test_grad_scaler_leaves_the_variant_step_unchanged(opt_cls, kw) -> None:
    """eps and GSAM's d are invariant to the loss scale: fp16's GradScaler path (here on
    fp32 CPU) takes the unscaled step; second_order and LookSAM refuse a scaler."""
    a, b = mlp().float(), mlp().float()
    x, y = batch()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    sam_step(a, sgd(a, opt_cls, **kw), F.cross_entropy, x.float(), y, scaler=scaler)
    sam_step(b, sgd(b, opt_cls, **kw), F.cross_entropy, x.float(), y)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="GradScaler"):
        sam_step(a, sgd(a, second_order=True), F.cross_entropy, x.float(), y, scaler=scaler)
