"""One writer per run directory: ``RunLock`` holds an exclusive ``flock`` on
``<run dir>/.sam-train.lock`` for the run's life.

The file says who holds it (host, pid, start time). A second ``sam-train`` on the same
directory cannot take the lock and stops with one line naming the holder. The kernel
drops a lock when its process dies, however it dies; the holder's record then stays in the
file (a clean release empties it), so the next run takes the lock over and says whose
it was. Where the file system refuses locks (ENOLCK, EOPNOTSUPP) the record alone
decides: a holder on this host whose pid is gone is stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from sam.errors import UserError

log = logging.getLogger("sam.train")

LOCK_FILE = ".sam-train.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {holder.get('started_at', '?')}")


def _alive(holder: dict) -> bool:
    """Whether a holder record names a live process (on another host: assumed alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


class RunDirBusy(UserError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """The lock of one run directory (context manager): ``acquire`` or a UserError naming
    the holder; ``release`` empties the record and unlocks."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def _record(self) -> dict:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the lock; UserError (exit 2) when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locks = True
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusy(f"{self.path.parent} is in use by sam-train "
                            f"{_describe(self._record())}: wait for it to end, or use "
                            "another run directory (hydra.run.dir=...)") from None
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            locks = False  # no locking here: judge by the holder's pid
        previous = self._record()
        if previous and previous.get("pid") != os.getpid():
            if not locks and _alive(previous):
                os.close(fd)
                raise RunDirBusy(f"{self.path.parent} is in use by sam-train "
                                f"{_describe(previous)} (this file system has no locks: "
                                f"delete {self.path} if that process is gone)")
            log.warning("taking over the lock of %s from %s, which is no longer running",
                        self.path.parent, _describe(previous))
        self._fd = fd
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as err:  # a full disk: the lock holds, only the record is missing
            log.warning("could not record the holder in %s: %s", self.path, err)

    def release(self) -> None:
        """Empty the record (a clean end) and drop the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # the next run only says it takes the lock over
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
