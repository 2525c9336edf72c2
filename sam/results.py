"""The results.json schema and atomic writes (shared by the trainer and the report).

results.json of one run (errors are percentages, 0-100):

    schema_version  1
    status          "running" | "complete" | "failed" | "diverged"
    error           null or the one-line reason of a failure
    diverged_at     {epoch, step} where the loss became NaN/inf (status "diverged" only)
    summary         {dataset, model, augment, optim, rho, m, epochs, seed, batch_size,
                     lr, lam, eval_split}: the keys a report groups runs by
    overrides       the Hydra task overrides of the run
    config          the fully resolved config
    history         one dict per finished epoch: epoch, train_loss, train_error,
                    test_loss, test_error, lr (after the epoch's last scheduler
                    step: the next epoch's starting lr), images_per_sec, epoch_time_s,
                    precision (bf16, fp16 or fp32: what amp resolved to); with
                    sharpness.every > 0 also sharpness_lambda_max, sharpness_lambda_ratio,
                    sharpness_trace, sharpness_trace_stderr, sharpness_m_sharpness,
                    sharpness_time_s on the measured epochs (sam/measure.py)
    final           the last epoch's metrics (never the best epoch) or null
    wall_time_s, images_per_sec, device, precision (of the latest session), versions,
                    started_at, updated_at
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1


def _file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write a file so that readers see the old or the new content, never a part:
    write a temporary file in the same directory, fsync, then rename over ``path``.
    The file gets the mode a plain ``open`` would (mkstemp's own is 0600: unreadable
    to collaborators sharing the results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: str | Path) -> None:
    """Delete the temporary files of ``atomic_write``s that a kill interrupted in
    ``directory`` (``.<name>.<random>.tmp``; a checkpoint's can be hundreds of MB)."""
    for tmp in Path(directory).glob(".*.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file written by ``write_json``."""
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a checkpoint; the previous one is kept as ``*.prev.pt``."""
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_suffix(".prev.pt"))
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """Load ``path``, falling back to ``*.prev.pt`` when it is missing or corrupt.

    Returns (state or None, a note about a fallback or None)."""
    path = Path(path)
    note = None
    for candidate in (path, path.with_suffix(".prev.pt")):
        if not candidate.exists():
            continue
        try:
            return torch.load(candidate, map_location="cpu", weights_only=False), note
        except Exception as err:  # a truncated or corrupted file: try the older one
            note = f"checkpoint {candidate} is unreadable ({type(err).__name__}); "
            note += "falling back to the previous one"
    return None, note
