"""Faults and bad input: no result is ever lost or left half-written.

Kills at random moments, corrupted checkpoints, a diverging run and a table of wrong
invocations; the last test prints the tally."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cifar_files import write_fake_cifar10

from sam.results import atomic_write, load_checkpoint, save_checkpoint

ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
SMALL = ["dataset=synthetic", "model=resnet20", "batch_size=32", "dataset.train_size=256",
         "dataset.test_size=64", "eval_batch_size=64", "deterministic=true"]
# an absurd learning rate without clipping: the run diverges (with fidelity=official's clip
# to norm 5, BatchNorm keeps even lr=1e12 finite)
DIVERGE = ["lr=1e12", "optim.max_grad_norm=null"]
TALLY = {"faults injected": 0, "bad inputs tried": 0, "results lost": 0}


def sam_train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sam.cli", *args], env=ENV, text=True,
                          capture_output=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def digest(run_dir: Path) -> dict[str, str]:
    """Hashes of everything a run keeps: results, checkpoints, its .hydra/ record."""
    files = [run_dir / "results.json", *sorted((run_dir / "checkpoints").glob("*.pt")),
             *sorted((run_dir / ".hydra").glob("*.yaml"))]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}


def assert_intact(run_dir: Path) -> None:
    """Whatever exists in the run directory is whole: JSON parses, checkpoints load."""
    if (run_dir / "results.json").exists():
        json.loads((run_dir / "results.json").read_text())
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        torch.load(ckpt, weights_only=False)


def test_atomic_write_keeps_old_content_when_writer_dies(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"status": "complete"}')

    def dies_half_way(f):
        f.write('{"status": "runn')
        raise KeyboardInterrupt  # the process is interrupted mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_half_way)
    TALLY["faults injected"] += 1
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert torch.load(path.with_suffix(".prev.pt"))["epoch"] == 1
    path.write_bytes(path.read_bytes()[:20])  # truncated
    TALLY["faults injected"] += 1
    state, loaded, note = load_checkpoint(path)
    assert state == {"epoch": 1} and loaded == path.with_suffix(".prev.pt")
    assert "unreadable" in note and "previous" in note
    path.unlink()  # killed between moving last.pt aside and writing the new one
    state, loaded, note = load_checkpoint(path)
    assert state == {"epoch": 1} and "last.pt is missing" in note
    assert load_checkpoint(tmp_path / "none.pt") == (None, None, None)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    args = [*SMALL, "epochs=4"]
    reference = tmp_path / "reference"
    sam_train(*args, f"hydra.run.dir={reference}")
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sam.cli", *args, f"hydra.run.dir={run_dir}"]
    rng = random.Random(0)
    for _ in range(20):  # kill at random moments until a run gets through
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(1.0, 6.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            TALLY["faults injected"] += 1
            assert_intact(run_dir)
            continue
        assert proc.returncode == 0
        break
    sam_train(*args, f"hydra.run.dir={run_dir}")  # completes, or says it is complete
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    assert b["status"] == "complete"
    keys = ("train_loss", "train_error", "test_loss", "test_error")
    same = [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys]
                                                           for h in b["history"]]
    wa = torch.load(reference / "checkpoints" / "last.pt", weights_only=False)["model"]
    wb = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    same = same and all(torch.equal(wa[k], wb[k]) for k in wa)
    TALLY["results lost"] += 0 if same else 1
    assert same, "the resumed run must end exactly where the uninterrupted one did"


def test_diverging_run_records_where_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    sam_train(*SMALL, "epochs=2", f"hydra.run.dir={run_dir}")
    good = digest(run_dir)["last.pt"]
    # same directory, more epochs at an absurd learning rate: refused (other config)
    proc = sam_train(*SMALL, "epochs=3", *DIVERGE, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2 and "different config" in proc.stderr
    diverging = tmp_path / "diverging"
    proc = sam_train(*SMALL, "epochs=2", *DIVERGE, f"hydra.run.dir={diverging}", check=False)
    TALLY["faults injected"] += 1
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().startswith("sam-train: error: loss became NaN/inf in epoch 1")
    r = json.loads((diverging / "results.json").read_text())
    assert r["status"] == "diverged" and r["diverged_at"]["epoch"] == 1
    assert r["diverged_at"]["step"] >= 1 and r["final"] is None
    assert not (diverging / "checkpoints" / "last.pt").exists(), "no NaN weights are saved"
    assert digest(run_dir)["last.pt"] == good


@pytest.mark.parametrize("lagged", [False, True])
@pytest.mark.parametrize("check_every, stops_at", [(1, 6), (4, 8), (50, "end")])
def test_epoch_meter_stops_at_the_first_check_that_sees_the_bad_step(lagged, check_every,
                                                                      stops_at):
    """Losses finite but at step 6 of 10: Diverged(6), raised by the first check that can
    see step 6; a lagged (CUDA) check reads the state the check before copied, so it
    stops one check later (here: step 7, or the end-of-epoch check)."""
    from sam.train import Diverged, EpochMeter

    meter = EpochMeter(torch.device("cpu"), check_every)
    meter.lagged = lagged
    out, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(Diverged) as err:
        for step in range(1, 11):
            raised_at = step
            meter.update(torch.tensor(float("nan") if step == 6 else 1.0), out, y)
        raised_at = "end"
        meter.result()
    assert err.value.step == 6
    assert raised_at == ({1: 7, 4: "end", 50: "end"}[check_every] if lagged else stops_at)


def diverged_step(device: torch.device, check_every: int) -> int:
    """train_epoch over 10 batches whose 6th holds a NaN pixel: the step Diverged names
    (tests/test_cuda.py runs it on CUDA, where the check is lagged)."""

    from sam.optim import SAM
    from sam.train import Diverged, StepOptions, train_epoch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).to(device)
    batches = [(torch.randn(4, 3, 2, 2, device=device),
                torch.randint(0, 3, (4,), device=device)) for _ in range(10)]
    batches[5][0][0, 0, 0, 0] = float("nan")
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    cfg = StepOptions(nan_check_every=check_every)
    with pytest.raises(Diverged) as err:
        train_epoch(model, opt, sched, batches, cfg, None, None, device, False)
    return err.value.step


@pytest.mark.parametrize("check_every", [1, 50])
def test_divergence_step_is_exact_whatever_the_check_interval(check_every):
    """A NaN pixel in batch 6 of 10 makes step 6 the first NaN loss: Diverged says step 6
    however rarely the loss is checked."""
    assert diverged_step(torch.device("cpu"), check_every) == 6
    TALLY["faults injected"] += 1


def test_diverged_job_in_a_multirun_does_not_stop_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = sam_train("-m", *SMALL, "epochs=1", "lr=0.05,1e12", "optim.max_grad_norm=null",
                     f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode == 2
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json"))
    assert statuses == ["complete", "diverged"]
    from sam.report import main as report

    assert report([str(sweep), "--out", str(tmp_path / "report")]) == 0
    assert "diverged" in (tmp_path / "report" / "report.md").read_text()


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    run_dir = tmp_path_factory.mktemp("done") / "run"
    sam_train(*SMALL, "epochs=1", f"hydra.run.dir={run_dir}")
    return run_dir, digest(run_dir)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    write_fake_cifar10(root / "corrupt", per_batch=20, n_test=16)
    batch = root / "corrupt" / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])
    write_fake_cifar10(root / "repacked", per_batch=20, n_test=16)
    (root / "a_file").write_text("not a directory")
    return {"corrupt": root / "corrupt", "repacked": root / "repacked", "file": root / "a_file"}


FRESH = "hydra.run.dir={fresh}"  # a new directory instead of the completed run's
BAD_INPUTS = [
    (["dataset=nosuchset"], "dataset/nosuchset"),
    (["model=vgg99"], "model/vgg99"),
    (["optim=adamw"], "optim/adamw"),
    (["augment=mixup"], "augment/mixup"),
    (["schedule=linear"], "schedule/linear"),
    (["experiment=nope"], "experiment/nope"),
    (["rhoo=0.1"], "rhoo"),
    (["rho=-0.1"], "rho=-0.1"),
    (["m=3"], "m=3"),
    (["m=0"], "m=0"),
    (["optim.p=3"], "optim.p=3"),
    (["optim.wd_mode=both"], "wd_mode"),
    (["batch_size=0"], "batch_size=0"),
    (["eval_batch_size=0"], "eval_batch_size=0"),
    (["epochs=0"], "epochs=0"),
    (["epochs=ten"], "epochs='ten'"),
    (["lr=0"], "lr=0"),
    (["lam=-1"], "lam=-1"),
    (["amp=fp8"], "amp='fp8'"),  # strings quoted
    (["device=tpu0"], "device=tpu0"),
    ([FRESH, "dataset.train_size=8"], "batch_size=32"),
    (["dataset.val_fraction=1.5"], "val_fraction"),
    ([FRESH, "dataset=cifar10", "data_dir=/nonexistent/cifar"], "/nonexistent/cifar"),
    ([FRESH, "dataset=cifar10", "data_dir={file}"], "a_file"),
    ([FRESH, "dataset=cifar10", "data_dir={corrupt}", "dataset.verify=false"], "data_batch_2"),
    ([FRESH, "dataset=cifar10", "data_dir={repacked}"], "verify=false"),
    (["epochs=2"], "different config"),
]
if not torch.cuda.is_available():
    BAD_INPUTS += [(["device=cuda"], "CUDA is not available"), (["amp=fp16"], "amp=fp16")]


@pytest.mark.parametrize("args, words", BAD_INPUTS,
                         ids=[" ".join(a[-1:]) for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_changed(args, words, completed_run, bad_files):
    """Config errors are aimed at a completed run's directory (they must leave it as it
    was); data errors, found after that directory's config check, at a fresh one."""
    run_dir, before = completed_run
    fresh = run_dir.parent / f"fresh{TALLY['bad inputs tried']}"
    args = [f"hydra.run.dir={run_dir}"] + [a.format(fresh=fresh, **bad_files) for a in args]
    base = SMALL if "dataset=cifar10" not in args else ["model=resnet20", "batch_size=32"]
    proc = sam_train(*base, "epochs=1", *args, check=False)
    TALLY["bad inputs tried"] += 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("sam-train: error:"), proc.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    lost = digest(run_dir) != before
    TALLY["results lost"] += int(lost)
    assert not lost, "a bad invocation changed an earlier result"


def test_unwritable_output_directory(bad_files):
    proc = sam_train(*SMALL, "epochs=1", f"hydra.run.dir={bad_files['file']}/run", check=False)
    TALLY["bad inputs tried"] += 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "a_file" in lines[0] and "Traceback" not in proc.stderr


def test_zz_tally():
    """Runs last in this file: the counts of the fault suite."""
    if TALLY["bad inputs tried"] == 0:
        pytest.skip("the tally needs the rest of tests/test_faults.py in the same session")
    print("\nfault suite: " + ", ".join(f"{k} = {v}" for k, v in TALLY.items()))
    assert TALLY["bad inputs tried"] >= 20 and TALLY["faults injected"] >= 3
    assert TALLY["results lost"] == 0
