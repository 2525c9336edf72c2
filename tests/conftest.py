"""Shared fixtures: fake CIFAR files in torchvision's format, and real CIFAR-10 when
the offline copy (../shared/data, rebuilt by its `materialize`) is on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
# The tests never download: sam.data.fetch refuses at once (one DataMissing line) under
# SAM_OFFLINE=1, in the sam-train subprocesses too (tests/test_download.py unsets it for
# its local server).
os.environ["SAM_OFFLINE"] = "1"


def shared_data_dir() -> Path | None:
    """The offline CIFAR copy: $SAM_SHARED_DATA, <repo>/../shared/data or /work/shared/data."""
    candidates = [os.environ.get("SAM_SHARED_DATA"), REPO.parent / "shared" / "data",
                  "/work/shared/data"]
    for c in candidates:
        if c and (Path(c) / "materialize").exists():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def real_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding real CIFAR-10 (cifar-10-batches-py, re-encoded: load it
    with verify=False), materialized once from the offline copy; skips without it."""
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("no real CIFAR-10 here (no $SAM_DATA and no ../shared/data)")
    root = tmp_path_factory.mktemp("real_cifar")
    env = os.environ | {"PYTHON": sys.executable}
    subprocess.run([str(shared / "materialize"), str(root)], env=env, check=True,
                   capture_output=True, timeout=300)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module, as the subprocesses (OMP_NUM_THREADS=1): the same
    float sums, so a resumed run can equal an uninterrupted one bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
