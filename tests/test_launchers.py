"""Sweeps through Hydra's launchers: joblib (local, jobs in other processes) for real,
SLURM (submitit) up to the sbatch script, and the SLURM-task -> DDP-rank mapping."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import submitit
from helpers import stub_srun
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from sam import distributed

ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
SMALL = ["dataset=synthetic", "model=resnet20", "batch_size=32", "dataset.train_size=128",
         "dataset.test_size=64", "eval_batch_size=64", "epochs=1"]


def test_joblib_sweep_records_each_job_and_reports_the_failed_one(tmp_path):
    """Two jobs in joblib worker processes: both write results.json with their status;
    the diverged one is listed by the launching process, which exits with 2."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "sam.cli", "-m", "hydra/launcher=local",
                           "hydra.launcher.n_jobs=2", *SMALL, "lr=0.05,1e30",
                           f"hydra.sweep.dir={sweep}"],
                          env=ENV, text=True, capture_output=True, timeout=600)
    status = {}
    for path in sweep.glob("*/results.json"):
        r = json.loads(path.read_text())
        status[r["config"]["lr"]] = r["status"]
    assert status == {0.05: "complete", 1e30: "diverged"}, proc.stderr
    assert proc.returncode == 2, proc.stderr
    summary = [ln for ln in proc.stderr.splitlines() if "job(s) failed" in ln]
    assert summary == [summary[0]] and summary[0].startswith("sam-train: 1 job(s) failed:")
    assert "lr=1e+30" in summary[0] and "lr=0.05" not in summary[0]
    assert not (sweep / ".failed_jobs").exists()


def test_slurm_launcher_builds_one_task_per_gpu(tmp_path, monkeypatch):
    """hydra/launcher=slurm through the submitit plugin up to the sbatch script (no
    cluster: a stub srun, and the submission is intercepted)."""
    stub_srun(tmp_path, monkeypatch)
    seen = {}

    def fake_map_array(self, fn, *iterables):
        seen["sbatch"] = self._executor._make_submission_file_text("CMD", "uid")
        seen["overrides"] = [job[0] for job in zip(*iterables, strict=True)]
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    with initialize_config_module("sam.configs", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["optim=sgd"], ["optim=sam"]], initial_job_idx=0)
    assert seen["overrides"] == [["optim=sgd"], ["optim=sam"]]
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4",
                 "--cpus-per-task=8", "--time=1440", "--job-name=sam-train"):
        assert f"#SBATCH {line}\n" in seen["sbatch"], seen["sbatch"]


def test_slurm_tasks_of_one_job_become_ddp_ranks(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the export stays in this test
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_NTASKS": "4",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "3",
             "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    os.environ.update(slurm)
    sam_log = logging.getLogger("sam")
    level = sam_log.level
    try:
        distributed.adopt_submitit_env()
        assert sam_log.level == logging.ERROR  # rank 3 leaves the logging to rank 0
    finally:
        sam_log.setLevel(level)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"],
            os.environ["MASTER_ADDR"]) == ("3", "4", "1", "gpu07")
    assert distributed.env_world_size() == 4 and distributed.env_rank() == 3


def test_slurm_env_export_does_not_leak():
    assert "SUBMITIT_EXECUTOR" not in os.environ and "WORLD_SIZE" not in os.environ


def test_single_task_slurm_job_stays_single_process(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RANK", "WORLD_SIZE"):
        os.environ.pop(key, None)
    os.environ.update(SUBMITIT_EXECUTOR="slurm", SLURM_NTASKS="1")
    distributed.adopt_submitit_env()
    assert "RANK" not in os.environ and distributed.env_world_size() == 1
