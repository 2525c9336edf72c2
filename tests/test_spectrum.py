"""Figure 3 (left): the Hessian spectrum at chosen epochs (sharpness.epochs, slq_runs), a
WideResNet without BatchNorm under SAM's machinery, and sam-report's spectrum section.

The spectrum is checked against the dense Hessian of a tiny float64 network
(torch.autograd.functional.hessian): its top eigenvalues exactly, and the SLQ quadrature's
moments against tr(H^p) / dim within the estimator's own standard error."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from torch import nn
from torch.func import functional_call

import sam.train.runner as runner
from sam import SAM, sam_step
from sam.errors import UserError
from sam.models import WideResNet
from sam.settings import SharpnessSettings
from sam.sharpness import epoch_sharpness, measured_epoch, spectrum_path
from sam.train import Preempted, build_optimizer, run, validate

MEAN, STD = (0.5,), (0.25,)


def compose_train(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


# --------------------------------------------------------------------------- dense reference


class _Tiny(nn.Module):
    """47 float64 parameters on 1 x 4 x 4 images, 3 classes (a smooth loss: tanh)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x.double())).flatten(1))


def _dense_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of the dense float64 Hessian of the mean cross-entropy."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = w[start : start + shape.numel()].view(shape)
            start += shape.numel()
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, flat)
    return torch.linalg.eigvalsh((hessian + hessian.T) / 2)


def test_the_spectrum_of_chosen_epochs_matches_the_dense_hessian(tmp_path):
    torch.manual_seed(0)
    model = _Tiny().double()
    gen = torch.Generator().manual_seed(3)
    n = 30
    splits = SimpleNamespace(
        train_x=torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8),
        train_y=torch.randint(0, 3, (n,), generator=gen),
        mean=MEAN,
        std=STD,
    )
    dim = sum(p.numel() for p in model.parameters())
    runs = 25
    s = SharpnessSettings(
        epochs=(1, 3),
        images=n,
        k=5,
        iters=dim,
        trace_samples=2,
        dtype="float64",
        slq_runs=runs,
        slq_iters=dim,
    )
    kw = dict(epochs=3, seed=0, batch_size=10, m=10, rho=0.05, run_dir=tmp_path)
    assert epoch_sharpness(s, model, splits, 1, **kw)
    assert epoch_sharpness(s, model, splits, 2, **kw) == {}  # not listed: nothing measured
    assert not spectrum_path(tmp_path, 2).exists()
    doc = json.loads(spectrum_path(tmp_path, 1).read_text())

    # every training image (the subset is all of them), normalised by hand in float64
    x = (splits.train_x.double() - 255 * MEAN[0]) / (255 * STD[0])
    lam = _dense_eigenvalues(model, x, splits.train_y)
    top = lam.flip(0)[:5]
    scale = float(lam.abs().max())
    assert doc["epoch"] == 1 and doc["dim"] == dim and doc["images"] == n
    torch.testing.assert_close(
        torch.tensor(doc["top_k"], dtype=torch.float64), top, rtol=0, atol=1e-6 * scale
    )
    assert doc["lambda_max"] == pytest.approx(float(lam.max()), rel=1e-6)
    assert doc["lambda_ratio"] == pytest.approx(float(top[0] / top[4]), rel=1e-5)

    nodes = torch.tensor(doc["slq"]["nodes"], dtype=torch.float64)
    weights = torch.tensor(doc["slq"]["weights"], dtype=torch.float64)
    assert nodes.shape == weights.shape == (runs, dim)
    for row in nodes:  # dim Lanczos steps: every run's nodes are the whole spectrum
        torch.testing.assert_close(row.sort().values, lam, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(weights.sum(1), torch.ones(runs, dtype=torch.float64))
    # SLQ moments: mean_r sum_i tau_i theta_i^p estimates mean_k lambda_k^p; for a start
    # vector uniform on the sphere one run's variance is 2 / (d + 2) (mean lam^2p - (mean
    # lam^p)^2)
    for p in (1, 2, 3):
        estimate = float((weights * nodes**p).sum(1).mean())
        exact = float((lam**p).mean())
        var = 2 / (dim + 2) * float((lam ** (2 * p)).mean() - (lam**p).mean() ** 2)
        assert abs(estimate - exact) < 5 * math.sqrt(var / runs) + 1e-12 * scale**p, p
    # the stored broadened density integrates to 1 and keeps the quadrature's mean
    grid = torch.tensor(doc["slq"]["grid"], dtype=torch.float64)
    density = torch.tensor(doc["slq"]["density"], dtype=torch.float64)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-3)
    mean = float((weights * nodes).sum(1).mean())
    assert float(torch.trapezoid(grid * density, grid)) == pytest.approx(mean, abs=1e-3 * scale)


def test_measured_epochs_are_every_nth_the_last_and_the_listed_ones():
    s = SharpnessSettings(every=4, epochs=(1, 6))
    assert [e for e in range(1, 11) if measured_epoch(s, e, 10)] == [1, 4, 6, 8, 10]
    only = SharpnessSettings(epochs=(2,))
    assert [e for e in range(1, 6) if measured_epoch(only, e, 5)] == [2]
    assert not any(measured_epoch(SharpnessSettings(), e, 5) for e in range(1, 6))


def test_sharpness_epochs_are_checked_against_the_run():
    with pytest.raises(UserError, match=r"sharpness.epochs names epoch 300 of a 200-epoch run"):
        validate(compose_train("sharpness.epochs=[1,50,300]"))
    with pytest.raises(UserError, match="sharpness.k=3"):  # on: checked in full
        validate(compose_train("sharpness.epochs=[1]", "sharpness.k=3"))
    with pytest.raises(UserError, match="sharpness.slq_iters=1"):
        validate(compose_train("sharpness.epochs=[1]", "sharpness.slq_iters=1"))
    s, _ = validate(compose_train("sharpness.epochs=[1,50,200]", "sharpness.slq_runs=2"))
    assert s.sharpness.epochs == (1, 50, 200) and s.sharpness.on and s.sharpness.every == 0


# --------------------------------------------------------------------------- no BatchNorm


SMALL_WRN = ["model=wrn40_10", "model.depth=10", "model.widen_factor=1", "model.norm=none"]


def test_sam_on_needs_normalization_layers():
    s, _ = validate(
        compose_train(*SMALL_WRN, "dataset=synthetic", "optim=sam", "optim.perturb=norm")
    )
    model = WideResNet(10, 1, 10, norm="none")
    with pytest.raises(UserError, match="no normalization layer: use optim.perturb=all"):
        build_optimizer(s, model)


@pytest.mark.parametrize("impl", ["loop", "vmap"])
def test_m_sharpness_shards_without_batchnorm_match_the_hand_computed_update(impl):
    """SAM with shards of m on a WRN without BN, against eqs. 2-3 per shard by hand (float64):
    w' = w - lr mean_i grad L_i(w + rho g_i / ||g_i||), g_i = grad L_i(w)."""
    torch.manual_seed(0)
    model = WideResNet(10, 1, 10, norm="none").double()
    for p in model.parameters():  # away from the zero init, so every branch matters
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.arange(8) % 10
    lr, rho, m = 0.1, 0.05, 2
    w = {k: v.detach().clone() for k, v in model.named_parameters()}

    def grad(params: dict, xs, ys) -> dict:
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = F.cross_entropy(functional_call(model, params, (xs,)), ys)
        return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))

    total = {k: torch.zeros_like(v) for k, v in w.items()}
    for xs, ys in zip(x.split(m), y.split(m), strict=True):
        g = grad(w, xs, ys)
        norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
        gp = grad({k: w[k] + rho * g[k] / norm for k in w}, xs, ys)
        for k in total:
            total[k] += gp[k] / (len(x) // m)
    expected = {k: w[k] - lr * total[k] for k in w}

    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    sam_step(model, opt, F.cross_entropy, x, y, m=m, shard_impl=impl)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], rtol=0, atol=1e-12)
    assert list(model.buffers()) == []


# --------------------------------------------------------------------------- in a run


TINY = [
    *SMALL_WRN,
    "dataset=synthetic",
    "batch_size=16",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "eval_batch_size=32",
    "epochs=2",
    "deterministic=true",
    "device=cpu",
    "progress=false",
    "optim=sam",
    "m=8",
    "sharpness.epochs=[1,2]",
    "sharpness.images=16",
    "sharpness.iters=6",
    "sharpness.trace_samples=2",
    "sharpness.slq_runs=2",
    "sharpness.slq_iters=8",
]


def test_a_run_writes_its_spectra_and_a_resume_keeps_them(tmp_path, monkeypatch, one_thread):
    """A no-BN WRN under SAM with shards: spectrum/epoch_1.json and epoch_2.json, the same
    bytes whether the run was stopped after epoch 1 and resumed or not."""
    cfg = compose_train(*TINY)
    whole = tmp_path / "whole"
    run(cfg, whole)
    real_evaluate = runner.evaluate

    def evaluate_then_signal(*args, **kwargs):  # SIGTERM during epoch 1: stop after it
        os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*args, **kwargs)

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(runner, "evaluate", evaluate_then_signal)
    with pytest.raises(Preempted):
        run(cfg, stopped)
    monkeypatch.undo()
    first = spectrum_path(stopped, 1)
    assert first.exists() and not spectrum_path(stopped, 2).exists()
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    run(cfg, stopped)
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before  # kept, not redone
    for epoch in (1, 2):
        a, b = spectrum_path(whole, epoch), spectrum_path(stopped, epoch)
        assert json.loads(a.read_text()) == json.loads(b.read_text()), epoch
    assert sorted(p.name for p in (whole / "spectrum").iterdir()) == [
        "epoch_1.json",
        "epoch_2.json",
    ]
    results = json.loads((whole / "results.json").read_text())
    assert all(math.isfinite(h["sharpness_lambda_max"]) for h in results["history"])
    assert results["summary"]["model"].endswith(" norm=none")  # not the BN net's report row


# --------------------------------------------------------------------------- the report


FIG3_MODEL = {
    "_target_": "sam.models.wrn.WideResNet",
    "depth": 40,
    "widen_factor": 10,
    "norm": "none",
}


def _spectrum_run(root: Path, name: str, optim: str, seed: int, lams: dict, model: dict):
    from test_report import edit, write_run

    path = write_run(
        root,
        name,
        optim,
        seed,
        5.0,
        rho=0.05 if optim == "sam" else None,
        epochs=300,
        model="wrn40_10",
        dataset="cifar10",
    )
    edit(path, config={"model": model, "optim": {"name": optim}, "seed": seed})
    for epoch, (lam, ratio) in lams.items():
        doc = {
            "epoch": epoch,
            "lambda_max": lam,
            "lambda_ratio": ratio,
            "slq": {"grid": [-1.0, 0.0, lam], "density": [0.1, 1.0, 0.01]},
        }
        (path.parent / "spectrum").mkdir(exist_ok=True)
        (path.parent / "spectrum" / f"epoch_{epoch}.json").write_text(json.dumps(doc))


def test_report_tabulates_the_spectra_beside_figure_3_and_draws_them(tmp_path, capsys):
    from sam.report import main

    root = tmp_path / "fig3"
    _spectrum_run(root, "sgd0", "sgd", 0, {1: (60.0, 2.0), 50: (10.0, 1.5)}, FIG3_MODEL)
    _spectrum_run(root, "sgd1", "sgd", 1, {1: (64.0, 3.0), 50: (14.0, 1.5)}, FIG3_MODEL)
    _spectrum_run(root, "sam0", "sam", 0, {1: (20.0, 4.0), 50: (8.0, 2.0)}, FIG3_MODEL)
    assert main([str(root)]) == 0
    text = capsys.readouterr().out
    section = text.split("## Hessian spectrum during training")[1]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in section.splitlines()
        if line.startswith("| ") and "epoch" not in line
    }
    # SGD: mean of (60, 64) = 62, half-width t_{0.975, 1} s / sqrt(2) = 12.706 * 2 = 25.4
    assert rows["1"] == [
        "62 ± 25.4 (n=2)",
        "62.9",
        "2.5 ± 6.35 (n=2)",
        "2.5",
        "20 (n=1)",
        "18.6",
        "4 (n=1)",
        "3.6",
    ]
    assert rows["50"][:2] == ["12 ± 25.4 (n=2)", "12.5"] and rows["50"][5] == "8.9"
    assert (root / "spectrum.png").stat().st_size > 0

    other = tmp_path / "bn"  # the same net with BatchNorm: no paper value beside it
    _spectrum_run(other, "sgd0", "sgd", 0, {1: (60.0, 2.0)}, {**FIG3_MODEL, "norm": "batchnorm"})
    assert main([str(other)]) == 0
    line = [
        ln
        for ln in capsys.readouterr().out.split("## Hessian spectrum")[1].splitlines()
        if ln.startswith("| 1 ")
    ][0]
    assert [c.strip() for c in line.split("|")[2:-1]] == ["60 (n=1)", "-", "2 (n=1)", "-"]


def test_no_spectra_no_section(tmp_path, capsys):
    from test_report import write_run

    from sam.report import main

    write_run(tmp_path / "r", "sgd0", "sgd", 0, 5.0)
    assert main([str(tmp_path / "r")]) == 0
    assert "Hessian spectrum" not in capsys.readouterr().out
    assert not (tmp_path / "r" / "spectrum.png").exists()
