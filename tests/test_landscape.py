"""sam-landscape: filter-normalized directions, the 1-D / 2-D / interpolation grids against
closed forms on known quadratics (float64), and the CLI on tiny real sam-train runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import config_keys, console_in_process
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from sam.landscape import (
    evaluate,
    filter_normalize,
    interpolation,
    line,
    plane,
    random_direction,
    random_directions,
    run_landscape,
    same_architecture,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
TRAIN = ["dataset=synthetic", "model=resnet20", "batch_size=32", "dataset.train_size=64",
         "dataset.test_size=32", "eval_batch_size=32", "epochs=1", "deterministic=true"]
FAST = ["images=24", "batch_size=10", "line.points=5", "plane.points=3",
        "interpolation.points=5", "progress=false"]


def mean_of_output(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


class Quadratic(nn.Module):
    """A network whose loss is known: 0.5 (v - c)^T A (v - c) + |b|^2, with v the flattened
    2-D weight W (3 filters of 4) and b a bias; the output repeats the loss per image."""

    def __init__(self, a: np.ndarray, c: np.ndarray, w: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor(a))
        self.register_buffer("c", torch.tensor(c))
        self.weight = nn.Parameter(torch.tensor(w).reshape(3, 4))
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.weight.flatten() - self.c
        value = 0.5 * r @ self.a @ r + (self.bias ** 2).sum()
        return value.expand(len(x))


def quadratic(seed: int, at_minimum: bool = False) -> tuple[Quadratic, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((12, 12))
    a = m @ m.T + 0.5 * np.eye(12)  # symmetric positive definite
    c = rng.standard_normal(12)
    w = c.copy() if at_minimum else rng.standard_normal(12)
    return Quadratic(a, c, w), a, c


BATCHES = [(torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n)) for n in (2, 2, 1)]


def vec(direction: list[torch.Tensor]) -> np.ndarray:
    return direction[0].detach().flatten().numpy()


def test_line_on_a_quadratic_is_the_expected_parabola():
    model, a, c = quadratic(0)
    w = model.weight.detach().flatten().numpy().copy()
    (d,) = random_directions(model, 1, seed=3)
    assert torch.equal(d[1], torch.zeros(3, dtype=torch.float64))  # the bias stays put
    dv = vec(d)
    alphas = [-1.0, -0.6, -0.25, 0.0, 0.3, 0.7, 1.0]
    losses, errors = line(model, d, alphas, BATCHES, loss_fn=mean_of_output)
    assert errors == [None] * len(alphas)  # not class logits: no error rate
    curvature = dv @ a @ dv
    base = 0.5 * (w - c) @ a @ (w - c) + 0.14  # + |b|^2
    slope = (a @ (w - c)) @ dv
    for alpha, got in zip(alphas, losses, strict=True):
        assert got == pytest.approx(base + alpha * slope + 0.5 * alpha ** 2 * curvature,
                                    rel=1e-10, abs=1e-10)
    fitted = np.polyfit(alphas, losses, 2)
    assert 2 * fitted[0] == pytest.approx(curvature, rel=1e-8)
    assert np.array_equal(model.weight.detach().flatten().numpy(), w)  # weights put back


def test_plane_is_even_around_a_minimum_and_matches_the_quadratic_form():
    model, a, _ = quadratic(1, at_minimum=True)
    d1, d2 = random_directions(model, 2, seed=0)
    u, v = vec(d1), vec(d2)
    assert abs(u @ v) < np.linalg.norm(u) * np.linalg.norm(v)  # two different directions
    grid = [-1.0, -0.5, 0.0, 0.5, 1.0]
    losses, _ = plane(model, d1, d2, grid, grid, BATCHES, loss_fn=mean_of_output)
    z = np.array(losses) - 0.14  # the bias term, constant (its direction is zero)
    for i, alpha in enumerate(grid):
        for j, beta in enumerate(grid):
            step = alpha * u + beta * v
            assert z[i, j] == pytest.approx(0.5 * step @ a @ step, rel=1e-10, abs=1e-12)
    assert np.allclose(z, z[::-1, ::-1], rtol=1e-12, atol=0)  # L(a, b) = L(-a, -b)
    assert z[2, 2] == pytest.approx(0.0, abs=1e-12) and (z >= -1e-12).all()


def test_interpolation_on_a_quadratic_and_its_endpoints_on_a_batchnorm_net():
    first, a, c = quadratic(2)
    second, _, _ = quadratic(2)
    with torch.no_grad():
        second.weight.mul_(-0.5).add_(1.0)
    w1 = first.weight.detach().flatten().numpy().copy()
    w2 = second.weight.detach().flatten().numpy().copy()
    ts = [-0.5, 0.0, 0.25, 0.5, 1.0, 1.5]
    losses, _ = interpolation(first, second, ts, BATCHES, loss_fn=mean_of_output)
    for t, got in zip(ts, losses, strict=True):
        r = (1 - t) * w1 + t * w2 - c
        assert got == pytest.approx(0.5 * r @ a @ r + 0.14, rel=1e-10)
    assert 2 * np.polyfit(ts, losses, 2)[0] == pytest.approx((w2 - w1) @ a @ (w2 - w1),
                                                             rel=1e-8)
    # BatchNorm: t = 0 is the first network and t = 1 the second, running statistics too
    torch.manual_seed(0)
    nets = [conv_bn_net() for _ in range(2)]
    x = torch.randn(12, 3, 6, 6, dtype=torch.float64)
    for net in nets:
        net.train()
        with torch.no_grad():
            net(x * (2 + torch.rand(1, dtype=torch.float64)))  # different running statistics
    y = torch.randint(0, 5, (12,))
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    state = {k: v.clone() for k, v in nets[0].state_dict().items()}
    losses, errors = interpolation(nets[0], nets[1], [0.0, 1.0], batches)
    for net, loss, error in zip(nets, losses, errors, strict=True):
        net.eval()
        assert (loss, error) == pytest.approx(evaluate(net, batches), rel=1e-12)
    assert all(torch.equal(v, state[k]) for k, v in nets[0].state_dict().items())


def conv_bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 36, 5)).double()


def test_filter_normalization_against_a_hand_loop():
    torch.manual_seed(0)
    net = conv_bn_net()
    with torch.no_grad():
        net[0].weight[1].zero_()  # a dead filter gets a zero direction
    d = random_direction(net, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    params = list(net.named_parameters())
    raw = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for _, p in params]
    for (name, p), got, r in zip(params, d, raw, strict=True):
        if name in ("0.weight", "4.weight"):  # conv filters, linear rows
            for i in range(p.shape[0]):
                w_norm = float(np.linalg.norm(p[i].detach().numpy()))
                expected = r[i].numpy() * (w_norm / float(np.linalg.norm(r[i].numpy())))
                assert np.allclose(got[i].numpy(), expected, rtol=1e-12, atol=1e-15), name
                assert float(np.linalg.norm(got[i].numpy())) == pytest.approx(w_norm,
                                                                              rel=1e-12)
        else:  # biases, BatchNorm weight and bias
            assert torch.equal(got, torch.zeros_like(p)), name
    assert torch.equal(d[0][1], torch.zeros_like(d[0][1]))
    with pytest.raises(ValueError, match="shape"):
        filter_normalize([torch.ones(2, 3)], [torch.ones(3, 2)], [False])


def test_surface_uses_eval_mode_and_puts_the_network_back():
    torch.manual_seed(1)
    net = conv_bn_net()
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64) * 3 + 1
    y = torch.randint(0, 5, (8,))
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    d = random_direction(net, torch.Generator().manual_seed(0))
    losses, _ = line(net, d, [0.0], [(x, y)])
    assert net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    train_mode = evaluate(net, [(x, y)])[0]  # batch statistics (updates the running ones)
    net.load_state_dict(state)
    net.eval()
    assert losses[0] == pytest.approx(evaluate(net, [(x, y)])[0], rel=1e-12)
    assert losses[0] != pytest.approx(train_mode, rel=1e-3)
    with torch.no_grad():  # uneven batches weigh by their size: the mean over all images
        out = net(x)
    loss, error = evaluate(net, [(x[:3], y[:3]), (x[3:], y[3:])])
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(out, y).item(), rel=1e-12)
    assert error == pytest.approx((out.argmax(1) != y).double().mean().item(), abs=1e-15)
    other = conv_bn_net()
    other[0] = nn.Conv2d(3, 4, 5, padding=2).double()
    assert "0.weight has shape (4, 3, 3, 3) vs (4, 3, 5, 5)" in same_architecture(net, other)


# ---------------------------------------------------------------------------- the CLI


def sam_landscape(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam.cli.landscape", *args], env=ENV,
                          text=True, capture_output=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny sam-train runs on synthetic data: SGD and SAM (one epoch, two steps)."""
    root = tmp_path_factory.mktemp("runs")
    sgd, sam = root / "sgd_run", root / "sam_run"
    procs = [subprocess.Popen([sys.executable, "-m", "sam.cli", *TRAIN, *extra,
                               f"hydra.run.dir={d}"], env=ENV, text=True, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for d, extra in ((sgd, ["optim=sgd"]), (sam, []))]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return sgd, sam


def test_cli_writes_pngs_json_and_tensorboard_images(runs, tmp_path):
    sgd, sam = runs
    out = tmp_path / "out"
    proc = sam_landscape(f"runs=[{sgd},{sam}]", f"out_dir={out}", *FAST, "plane.surface=true",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SGD" in proc.stdout and "SAM (rho=0.05)" in proc.stdout
    doc = json.loads((out / "landscape.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["SGD", "SAM (rho=0.05)"]
    assert doc["data"] == {"dataset": "synthetic", "source": doc["data"]["source"],
                           "split": "train", "images": 24, "seed": 0, "augment": "none"}
    assert doc["points"] == 2 * (5 + 9) + 5
    for r in doc["runs"]:
        assert r["line"]["a"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
        assert len(r["plane"]["loss"]) == 3 and all(len(row) == 3 for row in r["plane"]["loss"])
        # the middle of the line and of the plane are the run's own weights
        assert r["line"]["loss"][2] == pytest.approx(r["plane"]["loss"][1][1], rel=1e-6)
        assert all(0 <= e <= 1 for e in r["line"]["error"])
    inter = doc["interpolation"]
    assert inter["t"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert inter["loss"][1] == pytest.approx(doc["runs"][0]["line"]["loss"][2], rel=1e-5)
    assert inter["loss"][3] == pytest.approx(doc["runs"][1]["line"]["loss"][2], rel=1e-5)
    names = ["landscape_1d.png", "landscape_2d_sgd.png", "landscape_2d_sam_rho0.05.png",
             "landscape_3d_sgd.png", "interpolation.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(p for p in tmp_path.iterdir() if p.name != "out")  # nothing of Hydra's

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in (sgd, sam):
        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        assert {"landscape/line", "landscape/plane", "landscape/interpolation",
                "landscape/surface"} <= set(acc.Tags()["images"]), run

    # the JSON redraws the PNGs without evaluating anything
    for name in names:
        (out / name).unlink()
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="landscape", overrides=[
            f"from_json={out / 'landscape.json'}", "plane.surface=true", "tensorboard=false"])
    assert run_landscape(cfg) == doc
    assert all((out / name).is_file() for name in names)


def landscape_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """sam-landscape's entry point in this process: exit status, stdout, stderr."""
    from sam.cli.landscape import landscape_main

    return console_in_process(monkeypatch, capsys, "sam-landscape", landscape_main, *args)


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, monkeypatch, capsys):
    sgd, sam = runs
    # a checkpoint of another model (ResNet-8) for the interpolation
    state = torch.load(sam / "checkpoints" / "last.pt", weights_only=False)
    config = OmegaConf.create(state["config"])
    config.model.depth = 8
    from hydra.utils import instantiate

    other = tmp_path / "resnet8.pt"
    torch.save({"model": instantiate(config.model).state_dict(),
                "config": OmegaConf.to_container(config), "epoch": 1}, other)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases = [
        ([f"runs=[{sgd},{other}]"], "hold different models (CifarResNet depth=20"),
        ([f"runs={tmp_path / 'missing'}"], "missing does not exist"),
        ([f"runs={empty}"], "holds no checkpoints/last.pt"),
        ([f"runs={sgd / 'checkpoints' / 'nothing.pt'}"], "nothing.pt does not exist"),
        ([], "nothing to draw"),
        ([f"runs={sgd}", "line.points=1"], "line.points=1: use 0 (none) or >= 2"),
        ([f"runs=[{sgd},{sam}]", "labels=[a]"], "labels has 1 names for 2 runs"),
        ([f"from_json={tmp_path / 'no.json'}"], "does not exist"),
    ]
    for args, expected in cases:
        code, out, err = landscape_in_process(monkeypatch, capsys, *FAST, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, out + err)
        assert len(lines) == 1 and lines[0].startswith("sam-landscape: error:"), err
        assert expected in lines[0], lines[0]
    # without the interpolation, two different models draw side by side
    code, out, err = landscape_in_process(
        monkeypatch, capsys, *FAST, f"runs=[{sgd},{other}]", f"out_dir={tmp_path / 'two'}",
        "interpolation.points=0", "plane.points=0", "tensorboard=false")
    assert code == 0, err
    doc = json.loads((tmp_path / "two" / "landscape.json").read_text())
    assert doc["interpolation"] is None and len(doc["runs"]) == 2
    assert doc["runs"][1]["model"].startswith("CifarResNet depth=8")


def test_run_dir_the_old_spelling_of_runs_works_with_a_hint(runs, tmp_path, monkeypatch,
                                                            capsys):
    sgd, _ = runs
    hint = "sam-landscape: run_dir= is now runs=; using runs="
    code, out, err = landscape_in_process(
        monkeypatch, capsys, *FAST, f"run_dir={sgd}", f"out_dir={tmp_path / 'one'}",
        "plane.points=0", "tensorboard=false")
    assert code == 0 and err.startswith(f"{hint}{sgd}\n"), err
    doc = json.loads((tmp_path / "one" / "landscape.json").read_text())
    assert [r["run_dir"] for r in doc["runs"]] == [str(sgd)]
    code, out, err = landscape_in_process(monkeypatch, capsys, *FAST,
                                          f"run_dir={tmp_path / 'missing'}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and lines[0] == f"{hint}{tmp_path / 'missing'}", err
    assert lines[1].startswith("sam-landscape: error:") and "missing does not exist" in lines[1]


def test_sam_report_takes_runs_as_its_directories(tmp_path, monkeypatch, capsys):
    """sam-report's directories are arguments; runs=[...], the other tools' spelling, names
    the same directories (with a hint)."""
    from sam.cli.report import report_main

    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setattr(sys, "argv", ["sam-report", f"runs=[{a},{b}]"])
    with pytest.raises(SystemExit) as exit_:
        report_main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 2, lines
    assert lines[0] == f"sam-report: takes the directories as arguments, not runs=; using {a} {b}"
    assert lines[1].startswith(f"sam-report: error: no such directory: {a}, {b}:")


def test_landscape_config_composes_and_help_names_every_option():
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="landscape", overrides=["runs=[/a,/b]"])
    assert list(cfg.runs) == ["/a", "/b"] and cfg.split == "train" and cfg.images == 1000
    assert cfg.plane.points == 21 and cfg.line.points % 2 == 1 and cfg.tensorboard
    proc = subprocess.run([sys.executable, "-m", "sam.cli.landscape", "--help"], env=ENV,
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    text = proc.stdout
    assert len(text.rstrip("\n").splitlines()) <= 60 and text.startswith("sam-landscape: ")

    for key in config_keys(yaml.safe_load((CONFIGS / "landscape.yaml").read_text())):
        assert re.search(rf"^ +{re.escape(key)} {{2,}}\S", text, re.M), \
            f"sam-landscape --help does not describe {key}"
