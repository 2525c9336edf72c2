"""``Trackers``: one object the runner writes to, fanned out to every chosen tracker."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sam.errors import UserError
from sam.settings import LoggerSettings
from sam.train.trackers.base import RunInfo, Tracker, tracker_status

log = logging.getLogger("sam.train")

_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the module it needs


class Trackers:
    """TensorBoard's ``SummaryWriter`` interface over several trackers: ``add_scalar``
    collects the scalars of a step, ``flush`` sends them to each tracker as one batch.
    ``tensorboard``: the writer, or None (not chosen); its errors propagate. A call of any
    other tracker that raises logs one warning and drops that tracker."""

    def __init__(self, tensorboard: Any | None, others: list[Tracker]) -> None:
        self.tensorboard = tensorboard
        self.others = list(others)
        self._pending: dict[int, dict[str, float]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar at ``step``: to TensorBoard now, to the others at ``flush``."""
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        self._pending.setdefault(int(step), {})[tag] = float(value)

    def add_hparams(self, *args: Any, **kwargs: Any) -> None:
        """TensorBoard's hparams (the others have the config as params already)."""
        if self.tensorboard is not None:
            self.tensorboard.add_hparams(*args, **kwargs)

    def flush(self) -> None:
        """Write TensorBoard's events, and send the collected scalars to the others."""
        if self.tensorboard is not None:
            self.tensorboard.flush()
        pending, self._pending = self._pending, {}
        for step, metrics in sorted(pending.items()):
            for tracker in list(self.others):
                self._guarded(tracker, tracker.log_metrics, metrics, step)

    def end(self, results: Mapping[str, Any], results_path: Path) -> None:
        """The run ended: each tracker other than TensorBoard records its status
        (:func:`tracker_status`) and results.json (written before this call)."""
        pending, self._pending = self._pending, {}
        status = tracker_status(results)
        for tracker in list(self.others):
            for step, metrics in sorted(pending.items()):
                self._guarded(tracker, tracker.log_metrics, metrics, step)
            self._guarded(tracker, tracker.finish, status, results_path)
        self.others = []

    def close(self) -> None:
        """Close TensorBoard's writer."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _guarded(self, tracker: Tracker, call: Callable[..., None], *args: Any) -> None:
        if tracker not in self.others:  # failed earlier in this flush
            return
        try:
            call(*args)
        except Exception as err:  # any tracker error: the run goes on without it
            self.others.remove(tracker)
            _warn(tracker.name, err)


def open_trackers(logger: LoggerSettings, info: RunInfo) -> Trackers:
    """The chosen trackers of a run, opened (a tracker that cannot open: one warning,
    the run goes on without it); UserError when a chosen tracker's package is absent."""
    for name in logger.names:
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise UserError(
                f"logger={name} needs the {package} package: "
                "pip install 'sam[trackers]' (or drop it from logger=[...])"
            )
    tensorboard = None
    if logger.tensorboard is not None:
        from sam.train.trackers.tensorboard import open_tensorboard

        tensorboard = open_tensorboard(info)
    others: list[Tracker] = []
    for name in logger.names:
        if name == "tensorboard":
            continue
        try:
            others.append(_open(name, getattr(logger, name), info))
        except Exception as err:
            _warn(name, err, opening=True)
    return Trackers(tensorboard, others)


def _open(name: str, settings: Any, info: RunInfo) -> Tracker:
    if name == "csv":
        from sam.train.trackers.csv_files import CsvTracker

        return CsvTracker(settings, info)
    if name == "mlflow":
        from sam.train.trackers.mlflow_run import MlflowTracker

        return MlflowTracker(settings, info)
    from sam.train.trackers.wandb_run import WandbTracker

    return WandbTracker(settings, info)


def _warn(name: str, err: BaseException, opening: bool = False) -> None:
    lines = str(err).strip().splitlines() or [""]
    text = lines[0][:300]
    log.warning(
        "logger %s failed%s (%s: %s); the run goes on without it",
        name,
        " to start" if opening else "",
        type(err).__name__,
        text,
    )
