"""Experiment trackers (logger=[...], sam/train/trackers/): each one's record read back
with its own reader, not ours: a real MLflow tracking server on localhost read with
MlflowClient, W&B's offline run file parsed record by record, the CSV files with csv; and
a tracker that fails (its server killed mid-run, a full disk) costs the run nothing."""

from __future__ import annotations

import base64
import csv
import errno
import hashlib
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import TINY_RUN, compose_train, free_port

from sam.train import run

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

# 64 images in batches of 16: 4 steps per epoch; a ResNet-8 trains in well under a second
TINY = [*TINY_RUN, "dataset.train_size=64"]
TAGS = {
    "train/loss": "train_loss",
    "train/error": "train_error",
    "test/loss": "test_loss",
    "test/error": "test_error",
    "lr": "lr",
}


def config(*overrides: str):
    return compose_train(*TINY, *overrides)


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["history"]


class Server:
    """``mlflow server`` on a free localhost port (sqlite store, artifacts in a folder),
    started at once; ``uri`` waits until it answers."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = open(folder / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{folder}/mlflow.db",
                "--artifacts-destination",
                str(folder / "artifacts"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
        self._up = False

    @property
    def uri(self) -> str:
        deadline = time.monotonic() + 240  # a loaded 2-core machine takes ~1 min
        while not self._up:
            assert self.proc.poll() is None, "mlflow server exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                self._up = True
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not answer"
                time.sleep(0.5)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow"))
    yield s
    s.stop()


def test_server_boots_while_other_tests_run(server):
    """Starts the module's server first (it takes tens of seconds), waits for nothing."""
    assert server.proc.poll() is None


def test_csv_files_hold_params_metrics_status_and_results(tmp_path):
    run_dir = tmp_path / "run"
    results = run(config("logger=[csv]", "rho=0.07"), run_dir)
    folder = run_dir / "csv"
    with open(folder / "params.csv", newline="") as f:
        params = dict(csv.reader(f))
    assert params["key"] == "value"  # the header row
    assert params["optim.rho"] == "0.07" and params["epochs"] == "2"
    assert params["dataset.name"] == "synthetic"
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row, epoch in zip(rows, history(run_dir), strict=True):
        for tag, key in TAGS.items():
            assert float(row[tag]) == pytest.approx(epoch[key], rel=1e-12)
    assert (folder / "status.txt").read_text() == "finished\n"
    assert json.loads((folder / "results.json").read_text()) == results
    assert not (run_dir / "tensorboard").exists()  # logger=[csv]: TensorBoard not chosen


def test_no_logger_writes_no_tracker_files(tmp_path):
    run_dir = tmp_path / "run"
    assert run(config("logger=[]", "epochs=1"), run_dir)["status"] == "complete"
    for name in ("tensorboard", "csv", "wandb", "trackers.json"):
        assert not (run_dir / name).exists(), name


def wandb_records(path: Path):
    """The protobuf records of a W&B run file: a 7-byte header (":W&B", magic, version),
    then LevelDB's log format: 32 KiB blocks of chunks, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def complete_records(path: Path, timeout: float = 60.0) -> list:
    """The file's records once it ends with the exit record: W&B's service process may
    still be writing it when run.finish() has returned (seen on a loaded machine)."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(path))
        except DecodeError:  # a record half written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {path} after {timeout} s"
        time.sleep(0.5)


def test_wandb_offline_run_holds_config_history_status_and_results(tmp_path):
    """sam-train in a fresh interpreter (W&B keeps process-wide state), offline."""
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    overrides = [*TINY, "logger=[tensorboard,wandb]", "rho=0.07", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        [sys.executable, "-m", "sam.cli", *overrides],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [file] = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    records = complete_records(file)
    config_, steps, summary, artifacts, exit_codes = {}, {}, {}, [], []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # init's config, or a later update of it
            updates = (record.run.config if kind == "run" else record.config).update
            config_.update(
                {".".join(u.nested_key) or u.key: json.loads(u.value_json) for u in updates}
            )
        elif kind == "history":
            item = {
                "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            steps[item["_step"]] = item
        elif kind == "summary":
            summary.update(
                {
                    "/".join(u.nested_key) or u.key: json.loads(u.value_json)
                    for u in record.summary.update
                }
            )
        elif kind == "artifact":
            artifacts.append(record.artifact)
        elif kind == "exit":
            exit_codes.append(record.exit.exit_code)
    assert "optim.rho" in config_, sorted(config_)[:10]  # what the file holds instead
    assert config_["optim.rho"] == "0.07" and config_["dataset.name"] == "synthetic"
    assert sorted(steps) == [1, 2]
    for epoch in history(run_dir):
        for tag, key in TAGS.items():
            assert steps[epoch["epoch"]][tag] == pytest.approx(epoch[key], rel=1e-12)
    assert summary["status"] == "finished" and exit_codes == [0]
    [artifact] = artifacts
    assert artifact.type == "results"
    [entry] = artifact.manifest.contents
    digest = base64.b64encode(hashlib.md5((run_dir / "results.json").read_bytes()).digest())
    assert entry.path == "results.json" and entry.digest == digest.decode()


def test_mlflow_server_run_holds_params_metrics_status_and_results(server, tmp_path):
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    run(
        config(
            "logger=[tensorboard,mlflow]",
            f"logger.mlflow.tracking_uri={server.uri}",
            "logger.mlflow.experiment=trackers-test",
            "rho=0.07",
        ),
        run_dir,
    )
    client = MlflowClient(server.uri)
    [found] = client.search_runs([client.get_experiment_by_name("trackers-test").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["optim.rho"] == "0.07" and found.data.params["epochs"] == "2"
    assert found.data.tags["sam.run_dir"] == str(run_dir)
    for tag, key in TAGS.items():
        points = client.get_metric_history(found.info.run_id, tag)
        points = sorted((p.step, p.value) for p in points)
        assert [step for step, _ in points] == [h["epoch"] for h in history(run_dir)]
        assert [v for _, v in points] == pytest.approx(
            [h[key] for h in history(run_dir)], rel=1e-12
        )
    assert [a.path for a in client.list_artifacts(found.info.run_id)] == ["results.json"]
    local = client.download_artifacts(found.info.run_id, "results.json", str(tmp_path))
    assert Path(local).read_bytes() == (run_dir / "results.json").read_bytes()
    assert (run_dir / "tensorboard").is_dir()  # TensorBoard beside it


def test_interrupted_run_is_killed_then_resumes_into_the_same_mlflow_run(
    server, tmp_path, monkeypatch
):
    """Ctrl-C in epoch 2: MLflow status KILLED, csv status interrupted; the rerun resumes
    into the same MLflow run, which ends FINISHED with each epoch once."""
    from mlflow import MlflowClient

    from sam.train import runner

    log_epoch = runner.log_epoch

    def interrupt_at_2(writer, metrics):
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt
        log_epoch(writer, metrics)

    cfg = config(
        "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri={server.uri}",
        "logger.mlflow.experiment=trackers-resume",
    )
    run_dir = tmp_path / "run"
    monkeypatch.setattr(runner, "log_epoch", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir)
    client = MlflowClient(server.uri)
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert (run_dir / "csv" / "status.txt").read_text() == "interrupted\n"
    monkeypatch.setattr(runner, "log_epoch", log_epoch)
    assert run(cfg, run_dir)["status"] == "complete"
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [p.step for p in client.get_metric_history(run_id, "test/error")]
    assert sorted(steps) == [1, 2]
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert (run_dir / "csv" / "status.txt").read_text() == "finished\n"


def test_failing_trackers_cost_the_run_one_warning_each(server, tmp_path, monkeypatch, caplog):
    """The MLflow server is killed after the first epoch's metrics reached it, and the
    CSV tracker's disk is full from its second write of metrics.csv on: two warning
    lines, one per tracker, and a complete run (the module's last test: it stops the
    server)."""
    from sam.train.trackers import csv_files, mlflow_run

    uri = server.uri
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    log_metrics = mlflow_run.MlflowTracker.log_metrics

    def then_kill(self, metrics, step):
        log_metrics(self, metrics, step)
        server.stop()

    monkeypatch.setattr(mlflow_run.MlflowTracker, "log_metrics", then_kill)
    write_text, writes = csv_files._write_text, []

    def full_disk(path, text):
        if path.name == "metrics.csv":
            writes.append(path)
            if len(writes) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_text(path, text)

    monkeypatch.setattr(csv_files, "_write_text", full_disk)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="sam.train"):
        results = run(
            config(
                "logger=[tensorboard,csv,mlflow]",
                f"logger.mlflow.tracking_uri={uri}",
                "logger.mlflow.experiment=trackers-failure",
            ),
            run_dir,
        )
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "sam.train" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 2, warnings
    assert any(w.startswith("logger mlflow failed") for w in warnings)
    assert any(w.startswith("logger csv failed") and "No space left" in w for w in warnings)
    assert all("\n" not in w for w in warnings)
    stored = json.loads((run_dir / "results.json").read_text())
    assert stored == results and stored["status"] == "complete"
    assert [h["epoch"] for h in stored["history"]] == [1, 2] and stored["final"]["epoch"] == 2
    assert (run_dir / "csv" / "status.txt").read_text() == "running\n"  # dropped after it
