"""sam-sharpness end to end, and the trainer's optional sharpness logging (CPU, tiny runs)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import console_in_process
from hydra import compose, initialize_config_module
from torch import nn

from sam.errors import UserError
from sam.settings import SharpnessSettings
from sam.sharpness import epoch_sharpness
from sam.train import validate

ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
TRAIN = ["dataset=synthetic", "model=resnet20", "batch_size=32", "dataset.train_size=128",
         "dataset.test_size=64", "eval_batch_size=64", "epochs=2", "deterministic=true"]
LOGGED = ["sharpness.every=1", "sharpness.images=32", "sharpness.iters=5",
          "sharpness.trace_samples=2"]
FAST = ["images=32", "batch_size=32", "iters=6", "trace_samples=2", "slq.runs=1", "slq.iters=6"]
SHARPNESS_KEYS = ("sharpness_lambda_max", "sharpness_lambda_ratio", "sharpness_trace",
                  "sharpness_m_sharpness")


def sam_sharpness(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam.cli.sharpness", *args], env=ENV,
                          text=True, capture_output=True, timeout=300, cwd=cwd)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny deterministic run twice, without and with sharpness.every=1."""
    root = tmp_path_factory.mktemp("runs")
    off, on = root / "off", root / "on"
    procs = [subprocess.Popen([sys.executable, "-m", "sam.cli", *TRAIN, *extra,
                               f"hydra.run.dir={d}"], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for d, extra in ((off, []), (on, LOGGED))]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return off, on


def test_sharpness_logging_leaves_the_training_trajectory_bit_identical(runs):
    off, on = runs
    a, b = results(off), results(on)
    assert a["status"] == b["status"] == "complete"
    for key in ("train_loss", "train_error", "test_loss", "test_error", "lr"):
        assert [h[key] for h in a["history"]] == [h[key] for h in b["history"]], key
    assert a["final"] == b["final"]
    ca, cb = checkpoint(off), checkpoint(on)
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:  # weights and BatchNorm buffers
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(ca["rng"]["cpu"], cb["rng"]["cpu"])

    for h in a["history"]:
        assert not any(k.startswith("sharpness_") for k in h)
    for h in b["history"]:
        assert all(k in h for k in SHARPNESS_KEYS), h
        assert math.isfinite(h["sharpness_lambda_max"]) and h["sharpness_lambda_max"] > 0
        assert math.isfinite(h["sharpness_trace"]) and h["sharpness_m_sharpness"] >= 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(on / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("lambda_max", "lambda_ratio", "trace", "m_sharpness"):
        assert f"sharpness/{tag}" in tags, tags
    assert [e.step for e in acc.Scalars("sharpness/lambda_max")] == [1, 2]


def test_sam_sharpness_on_a_run_dir_writes_json_and_png(runs, tmp_path):
    _, on = runs
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = sam_sharpness(f"run_dir={on}", *FAST, "m_sharpness.m=[8,32]", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    # run_dir=, the old spelling of runs=: still measured, with a hint
    assert f"sam-sharpness: run_dir= is now runs=; using runs={on}\n" in proc.stderr
    assert "lambda_max" in proc.stdout and "sharpness.json" in proc.stdout
    doc = json.loads((on / "sharpness.json").read_text())
    assert doc["epoch"] == 2 and doc["data"]["images"] == 32 and doc["settings"]["k"] == 5
    top = doc["top_k"]
    assert len(top) == 5 and math.isfinite(doc["lambda_max"]) and doc["lambda_max"] == top[0]
    assert top == sorted(top, reverse=True) and doc["lambda_max"] >= top[4]
    assert math.isfinite(doc["trace"]) and doc["dim"] == sum(
        v.numel() for k, v in checkpoint(on)["model"].items()
        if "running" not in k and "num_batches" not in k)
    assert set(doc["m_sharpness"]["values"]) == {"8", "32"}
    assert doc["m_sharpness"]["rho"] == 0.05  # the run's rho
    assert len(doc["density"]["grid"]) == len(doc["density"]["density"]) > 0
    assert (on / "hessian_density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(cwd.iterdir())  # Hydra wrote nothing of its own (no .hydra/, no log)

    # an explicit checkpoint (config read from it) into out_dir, no density
    out = tmp_path / "elsewhere"
    proc = sam_sharpness(f"checkpoint={on / 'checkpoints' / 'last.pt'}", f"out_dir={out}",
                         *FAST, "slq.runs=0")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((out / "sharpness.json").read_text())
    assert again["run_dir"] is None and again["density"] is None
    assert again["top_k"] == doc["top_k"]  # same seed, same subset, same weights
    assert again["m_sharpness"]["values"] == {"32": doc["m_sharpness"]["values"]["32"]}
    assert not (out / "hessian_density.png").exists()


def test_sam_sharpness_says_what_it_measured_when_the_run_is_not_as_expected(runs, tmp_path):
    """A truncated last.pt: the previous checkpoint is measured, said on stderr and
    recorded; a failed run is measured with a warning; no stale density plot is left."""
    _, on = runs
    run = tmp_path / "run"
    shutil.copytree(on, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    r = results(run)
    r["status"] = "failed"
    (run / "results.json").write_text(json.dumps(r))
    (run / "hessian_density.png").write_bytes(b"stale")
    proc = sam_sharpness(f"run_dir={run}", *FAST, "slq.runs=0")
    assert proc.returncode == 0, proc.stderr
    assert "the run is failed (checkpoint of epoch 1 of 2)" in proc.stderr
    assert "last.pt is unreadable" in proc.stderr and "last.prev.pt" in proc.stderr
    doc = json.loads((run / "sharpness.json").read_text())
    assert doc["checkpoint"].endswith("last.prev.pt") and doc["epoch"] == 1
    assert doc["run_status"] == "failed" and not (run / "hessian_density.png").exists()


@pytest.mark.parametrize("args, expected", [
    (["runs=/no/such/run"], "runs=/no/such/run is not a directory"),
    (["k=3"], "k=3: must be >= 5"),
    ([], "nothing to measure"),
    (["checkpoint=/no/such.pt"], "checkpoint=/no/such.pt does not exist"),
    (["m_sharpness.rho=-0.1"], "m_sharpness.rho=-0.1: must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected):
    proc = sam_sharpness(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam-sharpness: error:"), proc.stderr
    assert expected in lines[0]


def sharpness_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """sam-sharpness's entry point in this process: exit status, stdout, stderr."""
    from sam.cli.sharpness import sharpness_main

    return console_in_process(monkeypatch, capsys, "sam-sharpness", sharpness_main, *args)


def test_runs_names_the_run_and_run_dir_is_its_old_spelling(runs, tmp_path, monkeypatch,
                                                           capsys):
    _, on = runs
    code, out, err = sharpness_in_process(monkeypatch, capsys, f"runs={on}", *FAST,
                                          "slq.runs=0", f"out_dir={tmp_path / 'new'}")
    assert code == 0 and "is now runs=" not in err, err
    assert json.loads((tmp_path / "new" / "sharpness.json").read_text())["run_dir"] == str(on)
    missing = tmp_path / "missing"
    cases = [  # (arguments, the lines on stderr)
        ([f"run_dir={missing}"], [f"sam-sharpness: run_dir= is now runs=; using runs={missing}",
                                  f"sam-sharpness: error: runs={missing} is not a directory"]),
        ([f"runs=[{missing}]"], [f"sam-sharpness: error: runs={missing} is not a directory"]),
        ([f"runs=[{on},{tmp_path}]"], [f"sam-sharpness: error: runs=[{on},{tmp_path}] names 2 "
                                       "runs: sam-sharpness reads one"]),
        ([f"run_dir={on}", f"runs={on}"], ["sam-sharpness: error: both run_dir= and runs= "
                                           "given: give runs= only"]),
    ]
    for args, expected in cases:
        code, out, err = sharpness_in_process(monkeypatch, capsys, *args, *FAST)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == len(expected), (args, err)
        assert all(line.startswith(e) for line, e in zip(lines, expected, strict=True)), err


def test_sharpness_config_composes():
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="sharpness", overrides=["runs=/x", "m_sharpness.m=[4,16]"])
        train = compose(config_name="train")
    assert cfg.runs == "/x" and cfg.checkpoint is None and cfg.out_dir is None
    assert cfg.images == 1000 and cfg.k == 5 and cfg.iters >= cfg.k and cfg.dtype == "float32"
    assert cfg.slq.runs >= 1 and cfg.trace_samples >= 2 and cfg.seed == 0
    assert list(cfg.m_sharpness.m) == [4, 16] and cfg.m_sharpness.rho is None
    assert cfg.m_sharpness.ascent_steps == 1 and cfg.device == "auto"
    s = train.sharpness
    assert s.every == 0 and s.images == 1000 and s.k == 5 and s.m is None and s.rho is None
    assert {"iters", "trace_samples"} <= set(s)


def test_training_config_rejects_bad_sharpness_settings():
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        bad = compose(config_name="train", overrides=["sharpness.every=1", "sharpness.k=3"])
        off = compose(config_name="train", overrides=["sharpness.k=3"])  # every=0: unchecked
    with pytest.raises(UserError, match="sharpness.k=3"):
        validate(bad)
    validate(off)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)  # train-mode m-sharpness draws from the global RNG
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).relu().mean((2, 3))))


def test_epoch_sharpness_schedule_and_state_untouched():
    torch.manual_seed(0)
    model = _Net()
    model.train()
    model.bn.eval()  # a mixed mode that must come back as it was
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    gen = torch.Generator().manual_seed(1)
    splits = SimpleNamespace(train_x=torch.randint(0, 256, (40, 3, 8, 8), generator=gen,
                                                   dtype=torch.uint8),
                             train_y=torch.randint(0, 3, (40,), generator=gen),
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    cfg = SharpnessSettings(every=2, images=24, batch_size=None, k=5, iters=8,
                            trace_samples=2, m=None, rho=None, dtype="float64")
    run = dict(epochs=3, seed=0, batch_size=8, m=8, rho=0.05)  # the run's (m: its batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert epoch_sharpness(cfg, model, splits, 1, **run) == {}
    out2 = epoch_sharpness(cfg, model, splits, 2, **run)
    out3 = epoch_sharpness(cfg, model, splits, 3, **run)  # the last epoch is always measured
    assert set(SHARPNESS_KEYS) <= set(out2) and out2.keys() == out3.keys()
    assert out2["sharpness_lambda_max"] == out3["sharpness_lambda_max"]  # fixed subset
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model.bn.training and model.drop.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
