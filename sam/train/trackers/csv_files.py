"""CSV files: ``params.csv`` (the flat config), ``metrics.csv`` (a row per epoch, a column
per scalar), ``status.txt`` (running, then finished / failed / interrupted) and a copy
of results.json, in ``logger.csv.dir`` (null: ``<run dir>/csv``). Every file is written
atomically (:func:`sam.results.atomic_write`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from sam.results import atomic_write
from sam.settings.schema import CsvLoggerSettings
from sam.train.trackers.base import RunInfo


class CsvTracker:
    """The CSV files of one run; a resumed run keeps the rows of the epochs up to the
    one it resumes from."""

    name = "csv"

    def __init__(self, s: CsvLoggerSettings, info: RunInfo) -> None:
        self.dir = Path(s.dir) if s.dir else info.run_dir / "csv"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: dict[int, dict[str, float]] = {}
        if not info.fresh:
            self.rows = {
                step: row
                for step, row in _read_rows(self.dir / "metrics.csv").items()
                if step <= info.start_epoch
            }
        _write(self.dir / "params.csv", [["key", "value"], *sorted(info.params.items())])
        _write_text(self.dir / "status.txt", "running\n")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Add the scalars to row ``step`` and rewrite metrics.csv."""
        self.rows.setdefault(step, {}).update(metrics)
        keys = sorted({k for row in self.rows.values() for k in row})
        table = [["epoch", *keys]]
        table += [
            [step, *(row.get(k, "") for k in keys)] for step, row in sorted(self.rows.items())
        ]
        _write(self.dir / "metrics.csv", table)

    def finish(self, status: str, results_path: Path) -> None:
        """status.txt and a copy of results.json."""
        _write_text(self.dir / "results.json", results_path.read_text())
        _write_text(self.dir / "status.txt", status + "\n")


def _read_rows(path: Path) -> dict[int, dict[str, float]]:
    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("epoch"))
            rows[step] = {k: float(v) for k, v in row.items() if v != ""}
    return rows


def _write(path: Path, table: list[list]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table)
    _write_text(path, buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))
