"""Write tiny fake CIFAR-10/100 folders in torchvision's exact on-disk format.

The original files are Python-2 pickles (protocol 2) whose dict keys and strings are
Python-2 `str`: `pickle.load(f, encoding="latin1")` (what torchvision does) gives str keys
("data", "labels"), `encoding="bytes"` gives b"data", b"labels". Python 3 cannot write
such strings directly, so `_Py2Pickler` writes every `bytes` object as a Python-2 str.
`data` is (N, 3072) uint8, each row an image's R, G, B planes in row-major order (CHW).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch we can extend
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """Pickle `obj` like Python 2 did: protocol 2, `bytes` written as Python-2 str."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _write(path: Path, obj: dict) -> None:
    path.write_bytes(py2_pickle(obj))


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, 32, 32) random uint8 images."""
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_fake_cifar10(root: Path, per_batch: int = 6, n_test: int = 7, seed: int = 0) -> dict:
    """Write root/cifar-10-batches-py; return {"train_x", "train_y", "test_x", "test_y"}
    (x as (N, 3, 32, 32) uint8, y as int64), train in data_batch_1..5 order."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for b in range(1, 6):
        x, y = _images(rng, per_batch), rng.integers(0, 10, per_batch)
        _write(folder / f"data_batch_{b}", {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": [int(v) for v in y],
            b"data": x.reshape(per_batch, 3072),
        })
        xs.append(x)
        ys.append(y)
    tx, ty = _images(rng, n_test), rng.integers(0, 10, n_test)
    _write(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in ty],
        b"data": tx.reshape(n_test, 3072),
    })
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write(folder / "batches.meta", {
        b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072,
    })
    return {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys).astype(np.int64),
            "test_x": tx, "test_y": ty.astype(np.int64)}


def write_fake_cifar100(root: Path, n_train: int = 20, n_test: int = 8, seed: int = 1) -> dict:
    """Write root/cifar-100-python; return {"train_x", "train_y", "test_x", "test_y"}
    with y the fine labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = _images(rng, n), rng.integers(0, 100, n)
        _write(folder / split, {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) // 5 for v in fine],
            b"data": x.reshape(n, 3072),
        })
        out[f"{split}_x"], out[f"{split}_y"] = x, fine.astype(np.int64)
    _write(folder / "meta", {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    })
    return out
