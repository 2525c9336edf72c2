"""Failed writes of a run's files (a full disk, a quota, an I/O error) as one clear error.

Every file of a run is written atomically (:func:`sam.results.atomic_write`), so a write
that fails leaves the previous checkpoint and results.json as they were. ``writing(path)``
turns the OSError into ``WriteFailed``, one line naming the file and the OS error; the
runner then records status failed where the disk still lets it, and a rerun after space
is freed resumes from the last checkpoint. ``quiet_background_writers`` keeps the errors
of TensorBoard's writer thread and of the log file off stderr: the thread's error is
raised again in the trainer at the next flush, which names the file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteFailed(OSError):
    """Writing one of the run's files failed; ``errno``/``strerror`` are the OS's."""

    def __init__(self, path: str | Path, err: OSError) -> None:
        super().__init__(err.errno, err.strerror or str(err), str(path))

    def __str__(self) -> str:
        code = f"[Errno {self.errno}] " if self.errno is not None else ""
        return (f"writing {self.filename} failed: {code}{self.strerror}; the files written "
                "before are intact: free space (or fix the file system), then rerun the "
                "same command to resume")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Raise any OSError of the block as ``WriteFailed(path)`` (an earlier one as is)."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as err:
        raise WriteFailed(path, err) from err


@contextmanager
def quiet_background_writers() -> Iterator[None]:
    """While the run lasts: an OSError in a TensorBoard writer thread prints no traceback
    (``writing`` reports it from the trainer), and a log record the log file cannot take
    prints no "Logging error" traceback (``logging.raiseExceptions``)."""
    hook, raise_exceptions = threading.excepthook, logging.raiseExceptions

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if not (issubclass(args.exc_type, OSError)
                and type(args.thread).__name__ == "_AsyncWriterThread"):
            hook(args)

    threading.excepthook, logging.raiseExceptions = excepthook, False
    try:
        yield
    finally:
        threading.excepthook, logging.raiseExceptions = hook, raise_exceptions
