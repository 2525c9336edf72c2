"""SAM's step on each base optimizer (``optim.base``: sgd, adam, adamw) against a float64
reference written out here from the formulas, never from sam.optim: eps = rho g/||g||, the
gradient at w + eps, then the base's update (SGD-Nesterov's buffer; Adam's m, v and bias
correction; AdamW's decoupled decay), with the weight-decay convention of each fidelity."""

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_train, settings_of
from torch import nn
from torch.func import functional_call

from sam.errors import UserError
from sam.optim import SAM, Descent, sam_step, variant_label
from sam.train import build_optimizer

LR, LAM, RHO, MU, BETAS, EPS = 0.01, 0.05, 0.3, 0.9, (0.8, 0.99), 1e-8
BASES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=g),
        )
        for _ in range(n)
    ]


def grad_at(model: nn.Module, w: dict, x, y, l2: float) -> dict:
    """grad of mean CE + l2/2 ||w||^2 at w (autograd on a functional copy)."""
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    loss = F.cross_entropy(functional_call(model, w, (x,)), y)
    loss = loss + 0.5 * l2 * sum((v**2).sum() for v in w.values())
    return dict(zip(w, torch.autograd.grad(loss, list(w.values())), strict=True))


def norm(d: dict) -> torch.Tensor:
    return torch.sqrt(sum((v**2).sum() for v in d.values()))


def reference(
    model, base: str, wd_mode: str, data, rho: float = RHO, max_norm: float | None = None
) -> dict:
    """The parameters after len(data) SAM steps (rho=0: plain steps), in float64.

    wd_mode "loss": L2 lambda/2 ||w||^2 in both passes' loss, base without weight decay;
    "base": the base's own (SGD/Adam: + lambda w in g; AdamW: w (1 - lr lambda))."""
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    l2 = LAM if wd_mode == "loss" else 0.0
    wd = LAM if wd_mode == "base" else 0.0
    b1, b2 = BETAS
    buf = {k: None for k in w}
    m = {k: torch.zeros_like(v) for k, v in w.items()}
    v2 = {k: torch.zeros_like(v) for k, v in w.items()}
    for t, (x, y) in enumerate(data, start=1):
        g = grad_at(model, w, x, y, l2)
        scale = rho / norm(g)
        d = grad_at(model, {k: w[k] + scale * g[k] for k in w}, x, y, l2)
        if max_norm is not None and norm(d) >= max_norm:
            c = max_norm / norm(d)
            d = {k: c * d[k] for k in d}
        for k in w:
            if base == "sgd":
                dk = d[k] + wd * w[k]
                buf[k] = dk if buf[k] is None else MU * buf[k] + dk
                w[k] = w[k] - LR * (dk + MU * buf[k])  # Nesterov
                continue
            if base == "adamw":
                w[k] = w[k] * (1 - LR * wd)
                dk = d[k]
            else:
                dk = d[k] + wd * w[k]
            m[k] = b1 * m[k] + (1 - b1) * dk
            v2[k] = b2 * v2[k] + (1 - b2) * dk**2
            m_hat, v_hat = m[k] / (1 - b1**t), v2[k] / (1 - b2**t)
            w[k] = w[k] - LR * m_hat / (torch.sqrt(v_hat) + EPS)
    return w


def base_kwargs(base: str) -> dict:
    return {"momentum": MU, "nesterov": True} if base == "sgd" else {"betas": BETAS, "eps": EPS}


def assert_params(model: nn.Module, expected: dict) -> None:
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wd_mode", ["base", "loss"])
@pytest.mark.parametrize("base", ["sgd", "adam", "adamw"])
def test_sam_step_on_each_base_matches_the_float64_formulas(base: str, wd_mode: str) -> None:
    """3 SAM steps; in wd_mode=loss AdamW runs with weight_decay 0 (not torch's 0.01)."""
    model, data = mlp(), batches()
    expected = reference(model, base, wd_mode, data)
    opt = SAM(
        model.parameters(),
        BASES[base],
        rho=RHO,
        lr=LR,
        weight_decay=LAM,
        wd_mode=wd_mode,
        **base_kwargs(base),
    )
    for x, y in data:
        sam_step(model, opt, F.cross_entropy, x, y)
    assert_params(model, expected)


@pytest.mark.parametrize("base", ["adam", "adamw"])
def test_a_plain_descent_on_adam_is_adam(base: str) -> None:
    """optim=sgd with optim.base=adam/adamw: Descent, the same steps without SAM (rho 0)."""
    model, data = mlp(), batches(2)
    expected = reference(model, base, "base", data, rho=0.0)
    opt = Descent(model.parameters(), BASES[base], lr=LR, weight_decay=LAM, **base_kwargs(base))
    for x, y in data:
        sam_step(model, opt, F.cross_entropy, x, y)
    assert_params(model, expected)


def _run(overrides: tuple[str, ...], steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = mlp()
    s = settings_of(
        compose_train(
            *overrides,
            f"lr={LR}",
            f"lam={LAM}",
            f"rho={RHO}",
            f"optim.betas=[{BETAS[0]},{BETAS[1]}]",
        )
    )
    opt = build_optimizer(s, model)
    for x, y in batches(steps):
        sam_step(model, opt, F.cross_entropy, x, y)
    return model, opt


@pytest.mark.parametrize(
    "fidelity, base, wd_mode",
    [
        ("official", "sgd", "loss"),
        ("official", "adam", "loss"),
        ("pytorch", "adam", "base"),
        ("pytorch", "adamw", "base"),
    ],
)
def test_configs_train_each_base_with_the_fidelitys_weight_decay(fidelity, base, wd_mode):
    """fidelity=official: L2 in the loss (base weight_decay 0), clipped at 5; pytorch: the
    base's weight decay (AdamW's decoupled), no clipping."""
    model, opt = _run((f"fidelity={fidelity}", f"optim.base={base}"))
    assert isinstance(opt.base_optimizer, BASES[base]) and type(opt) is SAM
    group = opt.param_groups[0]
    assert (group["l2"], group["weight_decay"]) == ((LAM, 0.0) if wd_mode == "loss" else (0.0, LAM))
    expected = reference(
        mlp(), base, wd_mode, batches(), max_norm=5.0 if fidelity == "official" else None
    )
    assert_params(model, expected)


def test_the_default_base_is_todays_sgd_bit_for_bit() -> None:
    """optim.base=sgd (the default) builds what optim=sam built before the setting:
    SAM(params, torch.optim.SGD, momentum=0.9, nesterov=True, ...), equal bit for bit."""
    model, opt = _run(())
    before = mlp()
    old = SAM(
        before.parameters(),
        torch.optim.SGD,
        rho=RHO,
        lr=LR,
        momentum=0.9,
        nesterov=True,
        weight_decay=LAM,
        wd_mode="loss",
        max_grad_norm=5.0,
    )
    for x, y in batches(3):
        sam_step(before, old, F.cross_entropy, x, y)
    assert type(opt.base_optimizer) is torch.optim.SGD
    for a, b in zip(model.parameters(), before.parameters(), strict=True):
        assert torch.equal(a, b)


def test_plain_baseline_takes_the_base_too() -> None:
    _, opt = _run(("optim=sgd", "fidelity=pytorch", "optim.base=adamw"), steps=1)
    assert type(opt) is Descent and isinstance(opt.base_optimizer, torch.optim.AdamW)
    assert tuple(opt.param_groups[0]["betas"]) == BETAS


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("optim.base=adamw",), "optim.base=adamw with optim.wd_mode=loss .*use optim.base=adam"),
        (("optim.base=rmsprop",), "optim.base='rmsprop'"),
        (("optim.base=adam", "optim.betas=[0.9]"), "optim.betas=\\[0.9\\]: give two numbers"),
        (("optim.base=adam", "optim.betas=[0.9,1.0]"), "optim.betas"),
    ],
)
def test_base_settings_that_cannot_run_are_refused_in_one_line(overrides, words) -> None:
    with pytest.raises(UserError, match=words) as err:
        settings_of(compose_train(*overrides))
    assert "\n" not in str(err.value)


def test_the_report_names_a_base_other_than_sgd() -> None:
    spec = compose_train("fidelity=pytorch", "optim.base=adamw").optim
    assert variant_label(spec) == "sam base=adamw"
    assert variant_label(compose_train().optim) == "sam"


def test_finetune_recipes_pin_the_official_sgd_base() -> None:
    """The official fine-tuning steps with SGD, Nesterov momentum 0.9 (flax_training.py
    create_optimizer, --use_rmsprop off by default): every finetune_* recipe says so
    itself, in _base/finetune.yaml, rather than leaving it to optim's default."""
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs" / "experiment"
    pinned = yaml.safe_load((configs / "_base" / "finetune.yaml").read_text())["optim"]
    assert pinned == {"base": "sgd", "momentum": 0.9, "nesterov": True}
    for recipe in sorted(p.stem for p in configs.glob("finetune_*.yaml")):
        optim = compose_train(f"experiment={recipe}", "optim=sam").optim
        assert (optim.base, optim.momentum, optim.nesterov) == ("sgd", 0.9, True), recipe


@pytest.mark.parametrize("base", ["adam", "adamw"])
def test_adam_state_resumes_bit_for_bit_from_a_checkpoint(base: str, tmp_path) -> None:
    """Adam's m, v and step survive torch.save / torch.load(weights_only=True): 2 steps,
    a checkpoint, 1 more step equals 3 uninterrupted steps exactly."""
    data = batches(3)
    model, resumed = mlp(), mlp()
    opt = SAM(
        model.parameters(), BASES[base], rho=RHO, lr=LR, weight_decay=LAM, **base_kwargs(base)
    )
    for x, y in data[:2]:
        sam_step(model, opt, F.cross_entropy, x, y)
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "c.pt")
    sam_step(model, opt, F.cross_entropy, *data[2])
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    again = SAM(
        resumed.parameters(), BASES[base], rho=RHO, lr=LR, weight_decay=LAM, **base_kwargs(base)
    )
    again.load_state_dict(ckpt["optim"])
    sam_step(resumed, again, F.cross_entropy, *data[2])
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
