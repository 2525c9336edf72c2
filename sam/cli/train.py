"""``sam-train``: one training run, or a sweep with ``-m`` (Hydra multirun).

A job's errors become one line. In a sweep a failed job is recorded (a failed
results.json, and the sweep's list of failed jobs) and the other jobs go on; the sweep
then exits with status 2, whichever launcher ran its jobs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam import distributed
from sam.cli._hydra import CONFIG_PATH, JobError, full_error, guarded, one_line
from sam.errors import UserError

_failed_jobs: list[str] = []  # multirun jobs that ended with a one-line error


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from sam.train import Diverged, Preempted, RunDirBusy, WriteFailed, run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    distributed.adopt_submitit_env()  # several SLURM tasks of one job -> DDP ranks
    try:
        results = run(cfg, hc.runtime.output_dir, overrides=overrides,
                      choices=dict(hc.runtime.choices), multirun=multirun,
                      invocation_files=_invocation_files(cfg, hc))
    except Preempted as stopped:  # SIGTERM/SIGUSR1: checkpointed at the current step
        print(f"{_prog()}: {stopped}", file=sys.stderr)
        stopped.handoff()  # hydra/launcher=slurm: submitit requeues the job (and exits)
        sys.exit(stopped.exit_status)
    except Exception as err:
        if full_error():
            raise
        expected = isinstance(err, UserError | Diverged | WriteFailed)
        if not multirun:
            if not expected:
                raise JobError(err) from err  # one line from guarded, past Hydra's printer
            print(f"{_prog()}: error: {one_line(err)}", file=sys.stderr)
            sys.exit(2 if isinstance(err, UserError) else 1)
        text = one_line(err) if expected else f"{type(err).__name__}: {one_line(err)}"
        print(f"{_prog()}: error: {text} [job {hc.job.num}: {' '.join(overrides)}]",
              file=sys.stderr)
        if not isinstance(err, RunDirBusy):  # the directory is another process's
            _record_unstarted(hc.runtime.output_dir, cfg, overrides, text)
        _record_failed(hc, " ".join(overrides))  # the other jobs of the sweep go on
        return None
    finally:
        distributed.cleanup()
    # what a Hydra sweeper minimizes: the final error on the evaluated split, which is the
    # validation split when dataset.val_fraction > 0 (summary.eval_split "val"; sam.cli.search)
    return results["final"]["test_error"] if results.get("final") else None


def _invocation_files(cfg: DictConfig, hc: Any) -> dict[str, str]:
    """The files Hydra keeps in ``<run dir>/.hydra/``, as YAML texts; configs/train.yaml
    sets ``hydra.output_subdir: null`` so that ``run`` writes them only once the run
    directory is accepted (a refused invocation must not rewrite a finished run's record)."""
    nodes = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hc}),
             "overrides.yaml": hc.overrides.task}
    return {name: OmegaConf.to_yaml(node) for name, node in nodes.items()}


def _record_unstarted(run_dir: str, cfg: DictConfig, overrides: list[str], error: str) -> None:
    """A sweep job refused before its run began (a bad value) still gets a results.json
    with status failed and the reason, so that ``sam-report`` lists it; a run that
    started has its own, which is left as it is."""
    from sam.results import RESULTS_FILE, SCHEMA_VERSION, write_json

    path = Path(run_dir) / RESULTS_FILE
    if path.exists():
        return
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        config = OmegaConf.to_container(cfg, resolve=False)
    try:
        write_json(path, {"schema_version": SCHEMA_VERSION, "status": "failed", "error": error,
                          "summary": None, "overrides": overrides, "config": config,
                          "history": [], "final": None})
    except OSError:
        pass  # the sweep's failed-job list still names it


_FAILED_DIR = ".failed_jobs"  # in the sweep directory, while a sweep runs


def _record_failed(hc: Any, line: str) -> None:
    """Remember a failed sweep job here, and in <sweep dir>/.failed_jobs/ for a launcher
    that ran it in another process (joblib, submitit): see ``FailedJobs``."""
    _failed_jobs.append(line)
    try:
        folder = Path(hc.sweep.dir) / _FAILED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{hc.job.num}.txt").write_text(line + "\n")
    except OSError:
        pass  # the job's results.json still records its status


class FailedJobs(Callback):
    """Hydra callback (configs/train.yaml): after a sweep, the launching process reads
    the failed jobs that other processes recorded, so that ``sam-train -m`` lists them
    and exits with status 2 whichever launcher ran the jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / _FAILED_DIR, ignore_errors=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir) / _FAILED_DIR
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.txt"), key=lambda p: int(p.stem)):
            line = path.read_text().strip()
            if line not in _failed_jobs:
                _failed_jobs.append(line)
        shutil.rmtree(folder, ignore_errors=True)


def _prog() -> str:
    """``sam-train``, tagged with the rank for ranks > 0 of a multi-process run."""
    r = distributed.env_rank()
    return f"sam-train[rank {r}]" if distributed.env_world_size() > 1 and r > 0 else "sam-train"


def _torchrun_argv() -> None:
    """Under torchrun (WORLD_SIZE > 1) one command is one run: refuse a sweep; ranks > 0
    compose the same config but write nothing of Hydra's (rank 0 sends its run dir)."""
    if distributed.env_world_size() <= 1:
        return
    if any(a in ("-m", "--multirun") or a == "hydra.mode=MULTIRUN" for a in sys.argv[1:]):
        raise UserError("torchrun runs one training run, not a sweep: drop -m, or sweep with "
                        "-m hydra/launcher=slurm hydra.launcher.gpus_per_node=N (N GPUs per run)")
    if distributed.env_rank() > 0:
        sys.argv += list(distributed.QUIET_RANK_OVERRIDES)


def train_main() -> None:
    """``sam-train``: run Hydra, turning errors into one line and an exit status."""
    def main() -> None:
        _torchrun_argv()
        _train()
        if _failed_jobs:
            print(f"sam-train: {len(_failed_jobs)} job(s) failed: "
                  + "; ".join(_failed_jobs), file=sys.stderr)
            sys.exit(2)

    guarded(_prog(), main, "interrupted; rerun the same command to resume")
