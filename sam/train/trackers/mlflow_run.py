"""MLflow: one MLflow run per training run, through ``MlflowClient`` (no global state):
the flat config as params, each epoch's scalars as metrics at step = the epoch, the end
as the run's status (FINISHED, FAILED, KILLED for interrupted) and results.json as an
artifact. ``logger.mlflow.tracking_uri``: a tracking server or a store; null = MLflow's
own choice ($MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the working directory,
artifacts in ``./mlruns``). A resumed run logs to the MLflow run it began."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from sam.settings.schema import MlflowLoggerSettings
from sam.train.trackers.base import RunInfo, remember, remembered

_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BATCH = 100  # params per log_batch call (MLflow's limit)
# a server that is down costs seconds, not MLflow's default of 7 retries (~2 minutes)
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class MlflowTracker:
    """The MLflow run of one training run."""

    name = "mlflow"

    def __init__(self, s: MlflowLoggerSettings, info: RunInfo) -> None:
        import mlflow
        from mlflow.entities import Param

        for key, value in _HTTP_DEFAULTS.items():  # unless the user set them
            os.environ.setdefault(key, value)
        uri = s.tracking_uri or mlflow.get_tracking_uri()  # null: the env's, else the default
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.run_id = self._previous(info, uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(s.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(s.experiment)
        )
        run = self.client.create_run(
            experiment_id, run_name=info.name, tags={"sam.run_dir": str(info.run_dir)}
        )
        self.run_id = run.info.run_id
        remember(info.run_dir, self.name, {"run_id": self.run_id, "tracking_uri": uri})
        params = [Param(k, v[:6000]) for k, v in sorted(info.params.items())]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _BATCH])

    def _previous(self, info: RunInfo, uri: str) -> str | None:
        """The run id this run directory began with on this tracking URI, if it is there."""
        previous = remembered(info.run_dir, self.name)
        if info.fresh or not previous or previous.get("tracking_uri") != uri:
            return None
        try:
            return self.client.get_run(previous["run_id"]).info.run_id
        except Exception:  # deleted, or another store: a new run
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One batch: every scalar of the step."""
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), ms, step) for k, v in metrics.items()]
        )

    def finish(self, status: str, results_path: Path) -> None:
        """results.json as an artifact, a ``status`` tag, then the run's status."""
        self.client.log_artifact(self.run_id, str(results_path))
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, _STATUS[status])
