"""Weights & Biases: one W&B run per training run: the flat config, each epoch's scalars
at step = the epoch, the end as summary ``status`` and the exit code (0 when finished),
and results.json as an artifact (type ``results``). ``logger.wandb.mode=offline`` (or
WANDB_MODE=offline) needs no network: the run is written under ``<dir>/wandb/`` for
``wandb sync`` later. A resumed run logs to the W&B run it began (same id)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

from sam.settings.schema import WandbLoggerSettings
from sam.train.trackers.base import RunInfo, remember, remembered


class WandbTracker:
    """The W&B run of one training run."""

    name = "wandb"

    def __init__(self, s: WandbLoggerSettings, info: RunInfo) -> None:
        import wandb

        previous = None if info.fresh else remembered(info.run_dir, self.name)
        run_id = previous["id"] if previous else uuid.uuid4().hex[:8]
        folder = Path(s.dir) if s.dir else info.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        # console="off": the training log stays ours; create_new: runs of an in-process
        # sweep one after another, each its own
        self.run = wandb.init(
            project=s.project,
            entity=s.entity,
            mode=s.mode,
            dir=str(folder),
            id=run_id,
            name=info.name,
            resume="allow",
            config=info.params,
            reinit="create_new",
            settings=wandb.Settings(console="off"),
        )
        remember(info.run_dir, self.name, {"id": run_id})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Every scalar of the step, at ``step``."""
        self.run.log(dict(metrics), step=step)

    def finish(self, status: str, results_path: Path) -> None:
        """results.json as an artifact, summary ``status``, then the run's end."""
        import wandb

        artifact = wandb.Artifact(f"results-{self.run.id}", type="results")
        artifact.add_file(str(results_path), name="results.json")
        self.run.log_artifact(artifact)
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "finished" else 1)
