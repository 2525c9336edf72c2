"""Getting a dataset's files onto the machine: torchvision's download, done once.

`download` fetches with torchvision's own code (the archive's md5 checked, a tqdm progress
bar, nothing fetched when the files are already there), under a file lock so that
concurrent runs (sweep jobs, DDP ranks) download once, and with a socket timeout so that
an offline machine fails in seconds instead of hanging (SAM_OFFLINE=1: no attempt at
all). Absent files end as one
`DataMissing` line naming the folder, ``SAM_DATA`` and the two ways to provide the data;
`is_default_location` says whether such a miss may fall back to synthetic data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from sam.errors import UserError

log = logging.getLogger("sam.data")

DEFAULT_DATA_DIR = "data"  # configs/train.yaml: data_dir: ${oc.env:SAM_DATA,data}
DOWNLOAD_TIMEOUT_S = 30.0  # per blocking socket operation: connect, each read
_LOCK = ".download.lock"


class DataMissing(UserError):
    """The dataset's files are absent from data_dir and were not downloaded: the one data
    error that ``dataset.fallback_synthetic`` may turn into synthetic data."""


def files_present(folder: Path, names: Iterable[str]) -> bool:
    """Whether every file of ``names`` exists in ``folder`` (no checksum: an existing copy,
    re-packed or not, is never downloaded over)."""
    return all((folder / n).is_file() for n in names)


def missing_message(pretty: str, root: Path, folder: str, why: str) -> str:
    """One line: ``pretty`` is not under ``root`` (``why``), and how to provide it."""
    return (
        f"{pretty} not found under '{root}' ({why}): either run once with internet access "
        f"(dataset.download=true, the default, fetches it there), or put its '{folder}' "
        "folder there yourself (a re-packed copy needs dataset.verify=false); to use "
        "another folder set data_dir=DIR or the environment variable SAM_DATA=DIR"
    )


def is_default_location(data_dir: str) -> bool:
    """Whether ``data_dir`` is the default one (``data`` in the working directory, with
    SAM_DATA unset): only there may absent data fall back to synthetic data; a folder the
    user named must hold the data."""
    if os.environ.get("SAM_DATA"):
        return False
    return Path(data_dir).expanduser().resolve() == Path(DEFAULT_DATA_DIR).resolve()


def download(pretty: str, root: Path, folder: str, present: Callable[[], bool],
             fetch: Callable[[], object], url: str) -> None:
    """Run torchvision's download ``fetch()`` into ``root`` unless ``present()``.

    One process at a time per ``root`` (an exclusive lock on ``root/.download.lock``; the
    others then find the files present). The environment variable SAM_OFFLINE=1 forbids
    the download (the test suite sets it). On failure the folders this call created are
    removed again and a one-line `DataMissing` names the cause and the ways to provide
    the data.
    """
    if present():
        return
    if os.environ.get("SAM_OFFLINE", "0") not in ("", "0"):
        raise DataMissing(missing_message(pretty, root, folder,
                                          "not downloaded: SAM_OFFLINE is set"))
    created = [p for p in (root, *root.parents) if not p.exists()]
    previous = socket.getdefaulttimeout()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / _LOCK, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            except OSError:  # a file system without locks (some NFS): download unguarded
                pass
            if not present():  # another process may have fetched it meanwhile
                log.info("%s not found under '%s': downloading it once from %s "
                         "(dataset.download=true)", pretty, root, url)
                socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
                fetch()
    except Exception as e:
        _remove_created(created, root)
        why = f"download failed: {type(e).__name__}: {' '.join(str(e).split())}"
        raise DataMissing(missing_message(pretty, root, folder, why)) from e
    finally:
        socket.setdefaulttimeout(previous)


def _remove_created(created: list[Path], root: Path) -> None:
    """Remove the lock file and the now empty folders a failed download created."""
    if root in created:
        (root / _LOCK).unlink(missing_ok=True)
    for path in created:  # deepest first
        try:
            path.rmdir()
        except OSError:
            return  # not empty (a partial archive, another process): leave it
