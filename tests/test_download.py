"""dataset.download: torchvision's own download code, run against a local HTTP server.

A tiny CIFAR-10 in the real on-disk format is packed as cifar-10-python.tar.gz and served
from 127.0.0.1; torchvision's CIFAR10 class gets that URL and the md5 sums computed here
(hashlib), so the real download, md5 check, extraction and verified read all run, with no
internet. Offline, a dead or silent server, and SAM_OFFLINE each end in one line, fast.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cifar_files import write_fake_cifar10
from helpers import compose_train as make
from helpers import splits_of
from torchvision.datasets import CIFAR10

from sam.data import DataMissing, load_dataset
from sam.data.fetch import download as download_files
from sam.errors import UserError


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, url, paths
    requested)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", requested
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def online(tmp_path, monkeypatch, server):
    """CIFAR10 pointed at a served archive of a tiny fake CIFAR-10; returns (the images
    and labels written, the paths the server was asked for)."""
    served, url, requested = server
    arrays = write_fake_cifar10(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-10-batches-py"
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(CIFAR10, "train_list",
                        [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    monkeypatch.delenv("SAM_OFFLINE", raising=False)  # conftest's guard
    return arrays, requested


def one_line_error(root: Path, **kwargs) -> str:
    """The DataMissing message of loading CIFAR-10 from ``root`` with download on."""
    with pytest.raises(DataMissing) as e:
        load_dataset("cifar10", str(root), download=True, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and f"'{root}'" in msg
    return msg


def test_default_config_downloads_once_md5_verified_exact_pixels(online, tmp_path):
    arrays, requested = online
    root = tmp_path / "fresh" / "data"  # does not exist yet: created by the download
    cfg = make("dataset=cifar10", f"data_dir={root}")
    assert cfg.dataset.download is True and cfg.dataset.verify is True
    s = splits_of(cfg)
    assert requested, "nothing was downloaded"
    assert np.array_equal(s.train_x.numpy(), arrays["train_x"])
    assert np.array_equal(s.train_y.numpy(), arrays["train_y"])
    assert np.array_equal(s.test_x.numpy(), arrays["test_x"])
    assert "md5 verified" in s.source and s.name == "cifar10" and s.fallback is None
    assert (root / "cifar-10-python.tar.gz").is_file()
    asked = len(requested)
    again = splits_of(cfg)  # idempotent: the files are there, nothing is fetched
    assert len(requested) == asked
    assert np.array_equal(again.train_x.numpy(), arrays["train_x"])


def test_existing_files_are_never_downloaded_over(online, tmp_path):
    """A re-packed copy (other md5 sums) is not replaced: its checksum error says how to
    use it, and the server is never asked."""
    _, requested = online
    write_fake_cifar10(tmp_path / "repacked", seed=5)
    with pytest.raises(UserError, match="checksum failed.*verify=false"):
        load_dataset("cifar10", str(tmp_path / "repacked"), download=True)
    s = load_dataset("cifar10", str(tmp_path / "repacked"), download=True, verify=False)
    assert len(s.train_x) == 30 and requested == []


def test_corrupt_download_is_one_line_and_the_next_run_recovers(online, tmp_path, monkeypatch):
    arrays, requested = online
    good = CIFAR10.tgz_md5
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    msg = one_line_error(tmp_path / "data")
    assert "download failed: RuntimeError" in msg
    monkeypatch.setattr(CIFAR10, "tgz_md5", good)  # the archive is fetched again
    s = load_dataset("cifar10", str(tmp_path / "data"), download=True)
    assert np.array_equal(s.test_x.numpy(), arrays["test_x"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_is_one_line_naming_the_ways_to_provide_data(tmp_path, monkeypatch):
    monkeypatch.delenv("SAM_OFFLINE", raising=False)
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{_closed_port()}/c.tar.gz")
    root = tmp_path / "new" / "data"
    start = time.monotonic()
    msg = one_line_error(root)
    assert time.monotonic() - start < 10
    assert msg.startswith("CIFAR-10 not found under") and "download failed: URLError" in msg
    for words in ("dataset.download=true", "cifar-10-batches-py", "dataset.verify=false",
                  "data_dir=DIR", "SAM_DATA=DIR"):
        assert words in msg, words
    assert not (tmp_path / "new").exists()  # the folders it created are gone again


def test_silent_server_times_out_instead_of_hanging(tmp_path, monkeypatch):
    """A host that accepts the connection and never answers (a firewall, a dead proxy)."""
    monkeypatch.delenv("SAM_OFFLINE", raising=False)
    monkeypatch.setattr("sam.data.fetch.DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever reads
        monkeypatch.setattr(CIFAR10, "url",
                            f"http://127.0.0.1:{silent.getsockname()[1]}/c.tar.gz")
        start = time.monotonic()
        msg = one_line_error(tmp_path / "data")
    assert time.monotonic() - start < 10 and "timed out" in msg
    assert socket.getdefaulttimeout() is None  # restored


def test_sam_offline_refuses_without_asking(online, tmp_path, monkeypatch):
    _, requested = online
    monkeypatch.setenv("SAM_OFFLINE", "1")
    msg = one_line_error(tmp_path / "data")
    assert "SAM_OFFLINE" in msg and requested == [] and not (tmp_path / "data").exists()


def test_concurrent_runs_download_once(tmp_path, monkeypatch):
    """Two runs that find the data absent at once (parallel sweep jobs, DDP ranks): the
    lock makes the second wait for the first, then find the files and fetch nothing."""
    monkeypatch.delenv("SAM_OFFLINE", raising=False)
    root, fetched, errors = tmp_path / "data", [], []
    marker = root / "done"

    def fetch():
        fetched.append(threading.get_ident())
        time.sleep(0.3)  # the other thread arrives meanwhile
        marker.write_text("x")

    def run():
        try:
            download_files("X", root, "x", marker.is_file, fetch, "http://unused")
        except Exception as e:  # reported below: a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(fetched) == 1 and marker.is_file()
