"""SVHN and Fashion-MNIST through torchvision's own readers, as uint8 CPU tensors.

SVHN (cropped digits, 32x32 RGB) is read by ``torchvision.datasets.SVHN`` from the .mat
files under ``<data_dir>/svhn``; by default its training set is train + extra
(73,257 + 531,131 images), as the paper and the official code (dataset_source.py:311-316).
Fashion-MNIST (28x28 grayscale) is read by ``torchvision.datasets.FashionMNIST`` from
``<data_dir>/FashionMNIST/raw``; its gzipped idx files are unpacked there when only they
are present. Fashion-MNIST stays 28x28 with one channel, as the official code trains it
(train.py:148-151: image_size 28, num_channels 1; no resize, no padding).

Images are normalised with per-channel statistics of the training set as read (``stats=
"train"``, computed exactly from pixel histograms; `channel_stats`), or with the constants
of the official code (``stats="official"``, dataset_source.py:278-279 and 329-330).
Absent files are fetched once by torchvision's download when ``download`` is set
(`sam.data.fetch`); a read that fails becomes one `UserError` naming the fix
(`DataMissing` for absent files).
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import SVHN, FashionMNIST
from torchvision.datasets.utils import check_integrity

from sam.data.fetch import DataMissing, files_present, missing_message
from sam.data.fetch import download as download_files
from sam.data.splits import Splits, Stats
from sam.errors import UserError

SETS = ("svhn", "fashion_mnist")
STATS_SOURCES = ("train", "official")
# The official code's constants (sam_jax/datasets/dataset_source.py:278-279, 329-330).
# Its Fashion-MNIST values are MNIST's (0.1307, 0.3081), not Fashion-MNIST's own.
OFFICIAL_STATS = {
    "svhn": ((0.43090966, 0.4302428, 0.44634357), (0.19759192, 0.20029082, 0.19811132)),
    "fashion_mnist": ((0.1307,), (0.3081,)),
}
SVHN_FOLDER = "svhn"


def channel_stats(x: Tensor, chunk: int = 65536) -> tuple[Stats, Stats]:
    """Per-channel mean and population std of uint8 images ``x`` (N, C, H, W) scaled to [0, 1].

    From the exact histogram n_c(v) of each channel's M = N*H*W pixel values v, with
    S1 = sum_v v n_c(v) and S2 = sum_v v^2 n_c(v) in integers: mean_c = S1 / (255 M),
    std_c = sqrt((M S2 - S1^2) / (255 M)^2), each a single rounding of exact integers, so
    the result does not depend on the order or the chunking.
    """
    counts = torch.zeros(x.shape[1], 256, dtype=torch.int64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].transpose(0, 1).reshape(x.shape[1], -1)
        for c in range(x.shape[1]):
            counts[c] += torch.bincount(part[c], minlength=256)
    means, stds = [], []
    for row in counts.tolist():
        m = sum(row)
        s1 = sum(v * n for v, n in enumerate(row))
        s2 = sum(v * v * n for v, n in enumerate(row))
        means.append(s1 / (255 * m))
        stds.append(math.sqrt((m * s2 - s1 * s1) / (255 * m) ** 2))
    return tuple(means), tuple(stds)


def load_set(name: str, data_dir: str, download: bool = False, verify: bool = True,
             extra: bool = True, stats: str = "train") -> Splits:
    """Read SVHN or Fashion-MNIST as uint8 (N, C, H, W) images and int64 labels.

    SVHN's training set is train followed by extra when ``extra``; its name is then
    "svhn", else "svhn_train" (a different training set, so the report keeps it apart).
    ``stats``: "train" or "official" (see the module docstring). ``verify=False`` skips
    torchvision's md5 check.
    """
    if stats not in STATS_SOURCES:
        raise UserError(f"dataset.stats={stats!r}: use {' or '.join(STATS_SOURCES)}")
    if not isinstance(extra, bool):
        raise UserError(f"dataset.extra={extra!r}: use true (train + extra) or false")
    root = Path(data_dir).expanduser().resolve()
    if name == "svhn":
        fields = _read_svhn(root, download, verify, extra)
    elif name == "fashion_mnist":
        fields = _read_fashion_mnist(root, download, verify)
    else:
        raise ValueError(f"load_set reads {SETS}, not {name!r}")
    if stats == "official":
        mean, std = OFFICIAL_STATS[name]
        fields["source"] += "; normalised with the official code's constants"
    else:
        mean, std = channel_stats(fields["train_x"])
        fields["source"] += (f"; normalised with the mean/std of its "
                             f"{len(fields['train_x'])} training images")
    return Splits(**fields, mean=mean, std=std)


def _one_line(err: Exception) -> str:
    """``Type: message`` with the message's whitespace (newlines too) collapsed."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


# ---------------------------------------------------------------------------- SVHN


def _svhn_reader(verify: bool) -> type[SVHN]:
    """torchvision's SVHN, or one that only checks its file exists (verify=False)."""
    if verify:
        return SVHN

    class Unverified(SVHN):
        def _check_integrity(self) -> bool:
            return Path(self.root, self.filename).is_file()

    return Unverified


def _read_svhn(root: Path, download: bool, verify: bool, extra: bool) -> dict:
    folder = root / SVHN_FOLDER
    splits = ("train", "extra", "test") if extra else ("train", "test")
    reader = _svhn_reader(verify)
    arrays = {}
    for split in splits:
        url, filename, _ = SVHN.split_list[split]
        if download:  # torchvision's own download, only when the file is absent
            download_files(f"SVHN {filename}", root, SVHN_FOLDER,
                           lambda f=filename: (folder / f).is_file(),
                           lambda s=split: SVHN(str(folder), split=s, download=True), url)
        try:
            ds = reader(str(folder), split=split)
        except Exception as e:  # one line naming the problem and the fix, the cause kept
            raise _explain_svhn(root, split, verify, e) from e
        arrays[split] = (torch.from_numpy(np.ascontiguousarray(ds.data)),
                         torch.from_numpy(ds.labels.astype(np.int64)))
        del ds  # frees the .mat array (1.6 GB for extra) before the next split is read
    parts = [arrays.pop(s) for s in splits if s != "test"]
    check = "md5 verified" if verify else "md5 not verified"
    what = "train+extra" if extra else "train"
    return dict(
        train_x=torch.cat([x for x, _ in parts]), train_y=torch.cat([y for _, y in parts]),
        test_x=arrays["test"][0], test_y=arrays["test"][1], num_classes=10,
        name="svhn" if extra else "svhn_train",
        source=f"torchvision SVHN {what} from '{folder}' ({check})",
    )


def _explain_svhn(root: Path, split: str, verify: bool, err: Exception) -> UserError:
    """A failure to read one SVHN split as a one-line UserError naming the fix
    (`DataMissing` when the file is absent)."""
    _, filename, md5 = SVHN.split_list[split]
    folder = root / SVHN_FOLDER
    path = folder / filename
    if not path.is_file():
        if split == "extra" and (folder / SVHN.split_list["train"][1]).is_file():
            return DataMissing(
                f"SVHN {filename} not found in '{folder}' (dataset.download=false): add it "
                "(1.3 GB; dataset.download=true fetches it), or set dataset.extra=false to "
                "train on the 73,257 train images only")
        return DataMissing(missing_message("SVHN", root, SVHN_FOLDER, "dataset.download=false"))
    if verify and not check_integrity(str(path), md5):
        return UserError(
            f"SVHN checksum failed for {filename} in '{folder}': re-download it, or set "
            "dataset.verify=false to skip the md5 check for re-packed copies")
    return UserError(f"cannot read SVHN file '{path}' ({_one_line(err)}): it is corrupt or "
                     "truncated; replace it with a fresh copy")


# ---------------------------------------------------------------------------- Fashion-MNIST


def _unpack_gz(raw: Path) -> None:
    """Write each idx file next to its .gz where only the .gz is present (what
    torchvision's download would have left), so FashionMNIST finds it."""
    for gz_name, _ in FashionMNIST.resources:
        gz, plain = raw / gz_name, raw / gz_name.removesuffix(".gz")
        if gz.is_file() and not plain.is_file():
            tmp = plain.with_name(f"{plain.name}.{os.getpid()}.part")  # concurrent jobs
            with gzip.open(gz, "rb") as src:
                tmp.write_bytes(src.read())
            tmp.replace(plain)


def _fashion_present(raw: Path) -> bool:
    """Whether each of the four files is there, gzipped or unpacked."""
    return all(files_present(raw, [gz]) or files_present(raw, [gz.removesuffix(".gz")])
               for gz, _ in FashionMNIST.resources)


def _read_fashion_mnist(root: Path, download: bool, verify: bool) -> dict:
    raw = root / "FashionMNIST" / "raw"
    if download:  # torchvision's own download, only when the files are absent
        download_files("Fashion-MNIST", root, "FashionMNIST", lambda: _fashion_present(raw),
                       lambda: FashionMNIST(str(root), train=True, download=True),
                       FashionMNIST.mirrors[0])
    if not _fashion_present(raw):
        raise DataMissing(missing_message("Fashion-MNIST", root, "FashionMNIST",
                                          "dataset.download=false"))
    if verify:
        _check_fashion_md5(raw)
    try:
        _unpack_gz(raw)
        train = FashionMNIST(str(root), train=True)
        test = FashionMNIST(str(root), train=False)
    except Exception as e:
        raise UserError(f"cannot read Fashion-MNIST from '{raw}' ({_one_line(e)}): a file "
                        "is corrupt or truncated; replace it with a fresh copy") from e
    check = "md5 verified" if verify else "md5 not verified"
    return dict(
        train_x=train.data.unsqueeze(1).contiguous(), train_y=train.targets.long(),
        test_x=test.data.unsqueeze(1).contiguous(), test_y=test.targets.long(),
        num_classes=10, name="fashion_mnist",
        source=f"torchvision FashionMNIST from '{raw}' ({check})",
    )


def _check_fashion_md5(raw: Path) -> None:
    """torchvision's md5 sums are those of the .gz files: each must be there and match."""
    for gz_name, md5 in FashionMNIST.resources:
        path = raw / gz_name
        if not path.is_file():
            raise UserError(
                f"Fashion-MNIST {gz_name} not found in '{raw}', so its unpacked copy cannot "
                "be md5-checked: add the .gz files, or set dataset.verify=false")
        if not check_integrity(str(path), md5):
            raise UserError(
                f"Fashion-MNIST checksum failed for {gz_name} in '{raw}': re-download it, "
                "or set dataset.verify=false to skip the md5 check for re-packed copies")
