"""Cluster faults: stop signals at random steps, checkpoints inside an epoch, one writer per
run directory, full disks. Every resumed run must end bit-identical to the uninterrupted
one (CPU, deterministic=true); no fault may lose or corrupt a result. The last test prints
this suite's tally, as tests/test_faults.py does for its own."""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import signal_after_steps, stub_srun
from hydra import compose, initialize_config_module

import sam.train.loop as loop
import sam.train.runner as runner
import sam.train.saving as saving
from sam.data.autoaugment import AutoAugmentLoader
from sam.data.device_loader import DeviceLoader
from sam.train import Preempted, RunDirBusy, RunLock, WriteFailed, run

TALLY = {"faults injected": 0, "resumes checked": 0, "results lost": 0}
# 128 images in batches of 16: 8 steps per epoch, 16 in all; a ResNet-8 trains in ~0.3 s
TINY = ["dataset=synthetic", "model=resnet20", "model.depth=8", "batch_size=16",
        "dataset.train_size=128", "dataset.test_size=32", "eval_batch_size=32", "epochs=2",
        "deterministic=true", "device=cpu", "progress=false"]
STEPS = 16
ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
KEYS = ("train_loss", "train_error", "test_loss", "test_error", "lr")


def config(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def outcome(run_dir: Path) -> tuple[list, dict]:
    """(the history's metrics, the final weights) of a finished run."""
    history = json.loads((run_dir / "results.json").read_text())["history"]
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    return [[h[k] for k in KEYS] for h in history], weights


def same_as(reference: tuple[list, dict], run_dir: Path) -> bool:
    """Bit-identical metrics and weights; counts a lost result otherwise."""
    metrics, weights = outcome(run_dir)
    same = metrics == reference[0] and all(torch.equal(weights[k], reference[1][k])
                                           for k in reference[1])
    TALLY["resumes checked"] += 1
    TALLY["results lost"] += 0 if same else 1
    return same


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py's: one torch thread


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list, dict]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(config(), run_dir)
    return outcome(run_dir)


class SignalAt:
    """Replaces sam_step: after the ``at``-th step of this session, send ``signals`` to
    this process (a real signal, caught by the run's handler)."""

    def __init__(self, monkeypatch, at: int, *signals: int) -> None:
        self.real, self.at, self.signals, self.calls = loop.sam_step, at, signals, 0
        monkeypatch.setattr(loop, "sam_step", self)

    def __call__(self, *args, **kwargs):
        out = self.real(*args, **kwargs)
        self.calls += 1
        if self.calls == self.at:
            for sig in self.signals:
                os.kill(os.getpid(), sig)
        return out


# ------------------------------------------------------------------ the loaders' position
@pytest.mark.parametrize("kind", ["cutout", "official_aa", "torchvision_aa"])
def test_a_loader_resumed_at_step_k_yields_the_rest_of_the_epoch_bit_for_bit(kind):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), \
        torch.arange(40) % 10
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def make():
        if kind == "torchvision_aa":
            return AutoAugmentLoader(x, y, 8, "cpu", *stats, seed=3, cutout_per_image=False)
        return DeviceLoader(x, y, 8, "cpu", *stats, seed=3,
                            augment="autoaugment" if kind == "official_aa" else "cutout")

    whole = make()
    whole.set_epoch(2)
    batches = list(whole)
    part = make()
    part.set_epoch(2)
    it = iter(part)
    for _ in range(3):
        next(it)
    position = part.position()
    assert position["epoch"] == 2 and position["step"] == 3
    resumed = make()  # a new process: only the position carries over
    resumed.resume_at(position)
    rest = list(resumed)
    assert len(rest) == len(batches) - 3
    for (xa, ya), (xb, yb) in zip(batches[3:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.epoch == 3 and [len(b[1]) for b in resumed] == [8] * 5  # then epoch 3


# ------------------------------------------------------------------ signals
def test_signals_at_random_steps_then_resume_is_bit_identical(tmp_path, monkeypatch, reference):
    """Five stops at random steps (SIGTERM or SIGUSR1, one with a second signal during
    the checkpoint write, one at an epoch's last step), each resumed in the same directory:
    the run ends where the uninterrupted one did, bit for bit."""
    run_dir, cfg = tmp_path / "run", config()
    rng = random.Random(20)
    targets = sorted(rng.sample(range(1, STEPS), 4) + [8])  # global steps; 8 ends epoch 1
    done = 0
    for i, target in enumerate(targets):
        sig = (signal.SIGTERM, signal.SIGUSR1)[i % 2]
        SignalAt(monkeypatch, target - done, sig)
        if i == 2:  # a second signal while the checkpoint is written: it completes
            def save_and_signal(path, state, real_save=saving.save_checkpoint):
                if state["position"] is not None:  # the stop's checkpoint
                    os.kill(os.getpid(), signal.SIGTERM)
                return real_save(path, state)

            monkeypatch.setattr(saving, "save_checkpoint", save_and_signal)
        with pytest.raises(Preempted) as stop:
            run(cfg, run_dir)
        monkeypatch.undo()
        TALLY["faults injected"] += 1
        epoch, step = (target - 1) // 8 + 1, (target - 1) % 8 + 1
        assert (stop.value.signum, stop.value.epoch, stop.value.step) == (sig, epoch, step)
        assert stop.value.exit_status == 128 + sig
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
        assert state["epoch"] == epoch - 1 and state["position"]["loader"]["step"] == step
        results = json.loads((run_dir / "results.json").read_text())
        assert results["status"] == "preempted" and f"step {step}" in results["error"]
        assert signal.getsignal(sig) is signal.SIG_DFL  # the handlers are given back
        done = target
    assert run(cfg, run_dir)["status"] == "complete"
    assert same_as(reference, run_dir), "the resumed run must end exactly where the " \
        "uninterrupted one did"


class SweepJob:
    """A submitit job function with a ``checkpoint``, as hydra-submitit-launcher's
    launcher: the requeued job runs the same overrides again."""

    def __call__(self, overrides: list[str]) -> None:
        pass

    def checkpoint(self, *args):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


def test_submitits_own_handler_requeues_the_job_after_the_checkpoint(tmp_path, monkeypatch):
    """submitit's real SignalHandler (its JobEnvironment replaced: no SLURM here) is the
    USR2 handler when the run starts, as in a hydra/launcher=slurm job: the run stops at
    the step, then the handoff pickles the job again, requeues it and exits."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths

    class Env:
        global_rank, requeued = 0, []

        def _requeue(self, countdown: int) -> None:
            self.requeued.append(countdown)

    delayed = DelayedSubmission(SweepJob(), ["seed=0"])
    delayed.set_timeout(60, 3)
    paths, env = JobPaths(tmp_path / "submitit", job_id="42"), Env()
    paths.folder.mkdir(parents=True)
    handler = SignalHandler(env, paths, delayed)
    before = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        SignalAt(monkeypatch, 5, signal.SIGUSR2)
        with pytest.raises(Preempted) as stop:
            run(config(), tmp_path / "run")
        TALLY["faults injected"] += 1
        assert not paths.submitted_pickle.exists() and env.requeued == []
        assert signal.getsignal(signal.SIGUSR2) == handler.checkpoint_and_try_requeue
        with pytest.raises(SystemExit):
            stop.value.handoff()
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert env.requeued == [3]  # preempted, not timed out: the countdown is kept
    assert DelayedSubmission.load(paths.submitted_pickle).args == (["seed=0"],)


def test_a_signal_between_epochs_stops_before_the_next_one(tmp_path, monkeypatch, reference):
    run_dir, cfg = tmp_path / "run", config()
    real_evaluate = runner.evaluate

    def evaluate_then_signal(*args, **kwargs):  # the signal comes while evaluating
        os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", evaluate_then_signal)
    with pytest.raises(Preempted) as stop:
        run(cfg, run_dir)
    monkeypatch.undo()
    TALLY["faults injected"] += 1
    assert (stop.value.epoch, stop.value.step) == (2, 0) and "before epoch 2" in str(stop.value)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["position"] is None
    run(cfg, run_dir)
    assert same_as(reference, run_dir)


def test_the_slurm_launcher_asks_for_the_signal_sam_train_handles(tmp_path, monkeypatch):
    """hydra/launcher=slurm up to the sbatch script: SLURM signals 90 s before the end
    with submitit's preemption signal, one of those a run stops on (then hands it to
    submitit's handler, which requeues: test above)."""
    import submitit
    from hydra.utils import instantiate

    from sam.train.preemption import STOP_SIGNALS

    stub_srun(tmp_path, monkeypatch)
    seen = {}

    def fake_map_array(self, fn, *iterables):
        seen["sbatch"] = self._executor._make_submission_file_text("CMD", "uid")
        seen["max_num_timeout"] = self._executor.max_num_timeout
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    with initialize_config_module("sam.configs", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["seed=0"]], initial_job_idx=0)
    usr = submitit.JobEnvironment.USR_SIG
    assert f"#SBATCH --signal={usr}@90\n" in seen["sbatch"], seen["sbatch"]
    assert f"SIG{usr}" in STOP_SIGNALS and seen["max_num_timeout"] == 3


# ------------------------------------------------------------------ checkpoint_every_steps
def test_checkpoints_inside_epochs_resume_exactly_and_their_cost_is_logged(tmp_path,
                                                                            monkeypatch,
                                                                            caplog, reference):
    """checkpoint_every_steps=3, the process dies at step 5 of epoch 2: the rerun starts
    from step 3 of epoch 2 (the last checkpoint) and ends bit-identical."""
    run_dir, cfg = tmp_path / "run", config("checkpoint_every_steps=3")

    class Dies(SignalAt):
        def __call__(self, *args, **kwargs):
            if self.calls == 12:  # global step 13 = epoch 2, step 5
                raise KeyboardInterrupt
            return super().__call__(*args, **kwargs)

    Dies(monkeypatch, 0)
    with caplog.at_level("INFO", logger="sam.train"), pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir)
    monkeypatch.undo()
    TALLY["faults injected"] += 1
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["position"]["loader"]["step"] == 3
    costs = [r.getMessage() for r in caplog.records if " written in " in r.getMessage()]
    assert any("inside an epoch" in c for c in costs) and any("after an epoch" in c
                                                               for c in costs), costs
    caplog.clear()
    with caplog.at_level("INFO", logger="sam.train"):
        run(cfg, run_dir)
    assert any("from epoch 2, step 3" in r.getMessage() for r in caplog.records)
    assert same_as(reference, run_dir)


def test_a_lagged_nan_check_is_read_before_a_checkpoint_inside_the_epoch():
    """On CUDA the NaN check lags (sam.train.loop.EpochMeter): the checkpoint inside an
    epoch reads it at once, so NaN weights of step 2 are never saved at step 3."""
    from sam.train import Diverged, EpochMeter

    meter = EpochMeter(torch.device("cpu"), check_every=10)
    meter.lagged = True
    out, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    for loss in (1.0, float("nan"), 1.0):
        meter.update(torch.tensor(loss), out, y)  # no check yet: every 10 steps
    with pytest.raises(Diverged) as err:
        meter.check_now()
    assert err.value.step == 2


def test_checkpoint_every_steps_must_be_a_count():
    from sam.errors import UserError

    with pytest.raises(UserError, match="checkpoint_every_steps=-1"):
        run(config("checkpoint_every_steps=-1"), "/nonexistent/never/written")


# ------------------------------------------------------------------ one writer per run
def test_a_second_start_on_a_held_directory_names_the_holder_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    holder = RunLock(run_dir)
    holder.acquire()  # another open file description: flock refuses it as another process
    try:
        with pytest.raises(RunDirBusy) as err:
            run(config(), run_dir)
        TALLY["faults injected"] += 1
        line = str(err.value)
        assert "\n" not in line and f"pid {os.getpid()}" in line
        assert socket.gethostname() in line and "since 20" in line
        assert sorted(p.name for p in run_dir.iterdir()) == [".sam-train.lock"]
    finally:
        holder.release()
    assert (run_dir / ".sam-train.lock").read_text() == ""  # a clean release


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_left_by_a_dead_process_is_taken_over_and_says_so(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid = dead_pid()
    (run_dir / ".sam-train.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": pid, "started_at": "2026-01-01T00:00:00+00:00"}))
    TALLY["faults injected"] += 1
    with caplog.at_level("WARNING", logger="sam.train"):
        assert run(config("epochs=1"), run_dir)["status"] == "complete"
    assert any(f"pid {pid}" in r.getMessage() and "taking over" in r.getMessage()
               for r in caplog.records)


def test_without_file_locks_the_holders_pid_decides(tmp_path, monkeypatch, caplog):
    """A file system that refuses flock (ENOLCK): a live holder on this host refuses the
    start, a dead one is taken over."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / ".sam-train.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(RunDirBusy, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    lock = RunLock(tmp_path)
    with caplog.at_level("WARNING", logger="sam.train"):
        lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert any("taking over" in r.getMessage() for r in caplog.records)
    lock.release()
    TALLY["faults injected"] += 2


# ------------------------------------------------------------------ full disks
class DiskFull:
    """ENOSPC at the ``nth`` write of one of the run's files: the fsync of an atomic
    write's temporary file (``name``: last.pt, results.json), or a TensorBoard record
    once the first checkpoint exists."""

    def __init__(self, monkeypatch, name: str, nth: int, run_dir: Path) -> None:
        self.name, self.nth, self.seen = name, nth, 0
        self.armed = run_dir / "checkpoints" / "last.pt"
        if name == "events":
            from tensorboard.summary.writer.record_writer import RecordWriter

            real = RecordWriter.write

            def write(writer, data):
                if self.armed.exists():  # epoch 1 is checkpointed: epoch 2's records
                    self.tick()
                return real(writer, data)

            monkeypatch.setattr(RecordWriter, "write", write)
        else:
            real_fsync = os.fsync

            def fsync(fd):
                if f"/.{name}." in os.readlink(f"/proc/self/fd/{fd}"):
                    self.tick()
                return real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fsync)

    def tick(self) -> None:
        self.seen += 1
        if self.seen >= self.nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# the nth write fails: epoch 2's checkpoint / results.json (the one at the start, then one
# per epoch) / its first TensorBoard record
SITES = {"last.pt": ("last.pt", 2), "results.json": ("results.json", 3),
         "events": ("tensorboard", 1)}


@pytest.mark.parametrize("site", list(SITES))
def test_a_full_disk_at_each_write_keeps_the_files_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                          site, reference):
    run_dir, cfg = tmp_path / "run", config()
    named, nth = SITES[site]
    DiskFull(monkeypatch, site, nth, run_dir)
    with pytest.raises(WriteFailed) as err:
        run(cfg, run_dir)
    monkeypatch.undo()  # space is freed
    TALLY["faults injected"] += 1
    line = str(err.value)
    assert "\n" not in line and str(run_dir) in line and named in line
    assert "No space left on device" in line and err.value.errno == errno.ENOSPC
    assert not list(run_dir.rglob(".*.tmp")), "no temporary file is left behind"
    results = json.loads((run_dir / "results.json").read_text())  # whole
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)  # whole
    if site == "results.json":  # the file it could not write holds the previous content
        assert results["status"] == "running" and len(results["history"]) == 1
        assert state["epoch"] == 2
    else:
        assert results["status"] == "failed" and "No space left" in results["error"]
        # epoch 2 trained (recorded when only its checkpoint failed), not checkpointed
        assert state["epoch"] == 1 and len(results["history"]) == (site == "last.pt") + 1
    assert run(cfg, run_dir)["status"] == "complete"
    assert same_as(reference, run_dir)


def test_cli_reports_a_failed_write_on_one_line_and_the_rerun_resumes(tmp_path, reference):
    """A real OS error at the write: the checkpoint is over the process's file-size limit
    (RLIMIT_FSIZE, EFBIG), as a quota would refuse it; results.json still fits."""
    run_dir = tmp_path / "run"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([sys.executable, "-m", "sam.cli", *TINY, f"hydra.run.dir={run_dir}"],
                          env=ENV, text=True, capture_output=True, timeout=300,
                          preexec_fn=limit_file_size)
    TALLY["faults injected"] += 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("sam-train: error: writing "), lines
    assert str(run_dir / "checkpoints" / "last.pt") in lines[0] and "File too large" in lines[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "File too large" in results["error"]
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert run(config(), run_dir)["status"] == "complete"  # no limit: starts over, completes
    assert same_as(reference, run_dir)


# ------------------------------------------------------------------ end to end (slow)
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                                            str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.slow
def test_a_really_full_disk_stops_with_one_line_and_the_rerun_resumes(small_disk, reference):
    """ENOSPC from the kernel: a tmpfs filled but for ~300 kB, less than a checkpoint."""
    run_dir, filler = small_disk / "run", small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"x" * (free - 300_000))
    proc = subprocess.run([sys.executable, "-m", "sam.cli", *TINY, f"hydra.run.dir={run_dir}"],
                          env=ENV, text=True, capture_output=True, timeout=300)
    TALLY["faults injected"] += 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    assert f"writing {run_dir}" in lines[0] and "No space left on device" in lines[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "No space left" in results["error"]
    filler.unlink()  # space is freed
    assert run(config(), run_dir)["status"] == "complete"
    assert same_as(reference, run_dir)


@pytest.mark.slow
def test_sigterm_to_sam_train_with_a_second_start_meanwhile(tmp_path):
    """sam-train A runs; B on the same directory exits 2 naming A; SIGTERM to A at a
    random moment: exit 143 after a checkpoint; the rerun ends bit-identical to an
    uninterrupted run."""
    cfg = ["epochs=6"]
    reference_dir = tmp_path / "reference"
    run(config(*cfg), reference_dir)
    rng = random.Random(1)
    for attempt in range(4):  # until the signal lands while A trains
        run_dir = tmp_path / f"run{attempt}"
        args = [sys.executable, "-m", "sam.cli", *TINY, *cfg, f"hydra.run.dir={run_dir}"]
        a = subprocess.Popen(args, env=ENV, text=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        lock = run_dir / ".sam-train.lock"
        while not (run_dir / "results.json").exists() and a.poll() is None:
            time.sleep(0.02)  # A holds the lock and has begun
        a.send_signal(signal.SIGSTOP)  # A keeps its lock while B starts (seconds)
        b = subprocess.run(args, env=ENV, text=True, capture_output=True, timeout=120)
        lines = [line for line in b.stderr.splitlines() if line.strip()]
        a.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.2, 1.5))
        a.send_signal(signal.SIGTERM)
        _, err = a.communicate(timeout=120)
        assert b.returncode == 2 and len(lines) == 1, b.stderr
        assert f"pid {a.pid}" in lines[0] and "in use" in lines[0]
        if a.returncode == 0:
            continue  # A had finished
        TALLY["faults injected"] += 2
        assert a.returncode == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
        assert lock.read_text() == ""  # released cleanly
        assert json.loads((run_dir / "results.json").read_text())["status"] == "preempted"
        run(config(*cfg), run_dir)
        assert same_as(outcome(reference_dir), run_dir)
        return
    pytest.fail("sam-train finished before every SIGTERM")


def _ddp_worker(rank: int, port: int, run_dir: str, signal_at: int) -> None:
    """One of two gloo ranks training TINY with batch 8 (16 steps an epoch); with
    ``signal_at`` only rank 1 gets SIGUSR1 after that step. Writes how its run ended."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if signal_at and rank == 1:
        loop.sam_step = signal_after_steps(signal_at, signal.SIGUSR1)
    from sam import distributed

    try:
        ended = run(config("batch_size=8", "epochs=1"), run_dir)["status"]
    except Preempted as stop:
        ended = f"{signal.Signals(stop.signum).name} {stop.epoch} {stop.step}"
    finally:
        distributed.cleanup()
    Path(run_dir, f"ended{rank}").write_text(ended)


@pytest.mark.slow
def test_under_ddp_a_signal_to_one_rank_stops_all_at_one_step_and_resumes_exactly(tmp_path):
    """Rank 1 alone gets SIGUSR1 after step 3: both ranks agree at step 10 (they compare
    every STOP_SYNC_STEPS), checkpoint every rank's sums, and the resumed run ends as the
    uninterrupted one."""
    import torch.multiprocessing as mp

    from sam.train.saving import STOP_SYNC_STEPS

    def spawn(run_dir: Path, signal_at: int) -> list[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(_ddp_worker, args=(port, str(run_dir), signal_at), nprocs=2, join=True)
        return [(run_dir / f"ended{r}").read_text() for r in range(2)]

    assert spawn(tmp_path / "reference", 0) == ["complete", "complete"]
    run_dir = tmp_path / "run"
    assert spawn(run_dir, 3) == [f"SIGTERM 1 {STOP_SYNC_STEPS}", f"SIGUSR1 1 {STOP_SYNC_STEPS}"]
    TALLY["faults injected"] += 1
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    sums = [m["loss_sum"] for m in state["position"]["meter_ranks"]]
    assert len(sums) == 2 and not torch.equal(*sums)  # each rank's own shard sums
    assert spawn(run_dir, 0) == ["complete", "complete"]
    assert same_as(outcome(tmp_path / "reference"), run_dir)


def test_zz_tally():
    """Runs last in this file: the counts of the reliability suite."""
    if TALLY["faults injected"] == 0:
        pytest.skip("the tally needs the rest of tests/test_reliability.py in the session")
    print("\nreliability suite: " + ", ".join(f"{k} = {v}" for k, v in TALLY.items()))
    assert TALLY["results lost"] == 0
