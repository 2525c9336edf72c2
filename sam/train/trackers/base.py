"""What every tracker gets and does: ``RunInfo`` (the run directory, a name, the flat
config), the ``Tracker`` protocol, the status words, and the ids a resumed run reuses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sam.results import flat_config, write_json

IDS_FILE = "trackers.json"  # in the run directory: the MLflow run id, the W&B run id


@dataclass(frozen=True)
class RunInfo:
    """One training run as trackers see it: where it lives, its name, its config as flat
    ``{"optim.rho": "0.05"}`` strings, and whether it starts fresh or resumes."""

    run_dir: Path
    name: str
    params: dict[str, str]
    fresh: bool
    start_epoch: int


def run_info(run_dir: Path, config: Mapping[str, Any], *, fresh: bool, start_epoch: int) -> RunInfo:
    """``RunInfo`` of a run: named by its directory and the one above (a sweep's job:
    ``<time>/<overrides>``), its resolved config flattened to strings."""
    params = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in flat_config(dict(config)).items()
    }
    return RunInfo(
        run_dir=run_dir,
        name=f"{run_dir.parent.name}/{run_dir.name}",
        params=params,
        fresh=fresh,
        start_epoch=start_epoch,
    )


class Tracker(Protocol):
    """A tracker of one run, opened with the run's config (its params)."""

    name: str

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record the scalars of one step (the epoch, from 1)."""

    def finish(self, status: str, results_path: Path) -> None:
        """Record the run's end: ``status`` (finished, failed or interrupted) and
        results.json as an artifact."""


def tracker_status(results: Mapping[str, Any]) -> str:
    """The run's end in trackers' words: finished (results.json status complete),
    interrupted (a stop signal or Ctrl-C: the run resumes), else failed."""
    status = results.get("status")
    if status == "complete":
        return "finished"
    if status == "preempted" or str(results.get("error") or "").startswith("KeyboardInterrupt"):
        return "interrupted"
    return "failed"


def remembered(run_dir: Path, tracker: str) -> dict[str, Any] | None:
    """What ``remember`` stored for ``tracker`` in this run directory, or None."""
    try:
        return json.loads((run_dir / IDS_FILE).read_text()).get(tracker)
    except (OSError, ValueError, AttributeError):
        return None


def remember(run_dir: Path, tracker: str, value: dict[str, Any]) -> None:
    """Store ``value`` (a tracker's run id) so that a resumed run logs to the same run."""
    try:
        ids = json.loads((run_dir / IDS_FILE).read_text())
    except (OSError, ValueError):
        ids = {}
    ids[tracker] = value
    write_json(run_dir / IDS_FILE, ids)
