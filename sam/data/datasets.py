"""CIFAR-10/100 and synthetic datasets, loaded into memory as uint8 CPU tensors.

`load_dataset` reads CIFAR through torchvision (md5-verified or not) or generates
CIFAR-shaped synthetic data from a seed, then optionally keeps a training subset and holds
out its tail as a validation set; `load_splits` does the same from a run's settings, with the
synthetic fallback for data absent from the default location. Absent files are downloaded
once when ``download`` is set (`sam.data.fetch`); a CIFAR read that fails becomes one
`UserError` naming the fix (`DataMissing` for absent files).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.datasets.utils import check_integrity

from sam.data.fetch import DataMissing, files_present, is_default_location, missing_message
from sam.data.fetch import download as download_files
from sam.data.image_sets import IMAGE_SETS
from sam.data.label_noise import add_label_noise
from sam.data.splits import Splits, Stats
from sam.data.torchvision_sets import load_set
from sam.errors import UserError
from sam.settings import DatasetSettings

log = logging.getLogger("sam.data")  # the package's logger, as before the split

DATASETS = ("cifar10", "cifar100", "svhn", "fashion_mnist", "synthetic")

# Per-channel mean and std of the training sets' pixels scaled to [0, 1] (population std),
# the 8 digits the official SAM code normalises with (sam_jax/datasets/dataset_source.py:
# 210-214); the 4-digit values often quoted are these rounded.
CIFAR_STATS = {
    "cifar10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    "cifar100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
}
_CIFAR = {"cifar10": (CIFAR10, "CIFAR-10", 10), "cifar100": (CIFAR100, "CIFAR-100", 100)}

# ---------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    data_dir: str,
    download: bool = False,
    verify: bool = True,
    subset: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    synthetic_size: tuple[int, int] = (1024, 256),
    options: dict[str, Any] | None = None,
) -> Splits:
    """Load `name` (one of DATASETS) as uint8 CPU tensors.

    CIFAR is read by torchvision from `data_dir` (the folder holding cifar-10-batches-py or
    cifar-100-python); `verify=False` skips torchvision's md5 check, for re-packed copies.
    `subset` keeps the first N training images; `val_fraction` > 0 then holds out the last
    fraction of them as the evaluation set in place of the test set. SVHN and Fashion-MNIST
    are read by `sam.data.torchvision_sets.load_set`, with `options` (extra, stats).
    """
    if name in _CIFAR:
        splits = _load_cifar(name, data_dir, download, verify)
    elif name in ("svhn", "fashion_mnist"):
        splits = load_set(name, data_dir, download, verify, **(options or {}))
    elif name == "synthetic":
        splits = make_synthetic(seed, *synthetic_size)
    elif name in IMAGE_SETS:  # files read by DataLoader workers: sam.data.image_loader
        raise UserError(f"dataset={name} is read from image files during training, not into "
                        f"memory: this needs one of {', '.join(DATASETS)}")
    else:
        choices = ", ".join(DATASETS + IMAGE_SETS)
        raise UserError(f"unknown dataset {name!r}: set dataset.name to one of {choices}")
    return _subset_and_split(splits, subset, val_fraction)


def load_splits(d: DatasetSettings, seed: int) -> Splits:
    """Dataset ``d`` as uint8 CPU tensors for a run of ``seed``, with the synthetic
    fallback when ``dataset.fallback_synthetic`` allows it and the data is absent from the
    default location (``data``, SAM_DATA unset)."""
    kwargs = dict(subset=d.subset, val_fraction=d.val_fraction, seed=seed)
    try:
        if d.name == "synthetic":  # generated: a subset larger than train_size is made
            size = (max(d.train_size, d.subset or 0), max(d.test_size, d.test_subset or 0))
            splits = load_dataset("synthetic", "", synthetic_size=size, **kwargs)
        else:
            options = ({"extra": d.extra, "stats": d.stats} if d.name == "svhn" else
                       {"stats": d.stats} if d.name == "fashion_mnist" else None)
            splits = load_dataset(d.name, d.data_dir, download=d.download, verify=d.verify,
                                  options=options, **kwargs)
    except DataMissing as err:  # absent files only: a wrong value stays an error
        if not (d.fallback_synthetic and is_default_location(d.data_dir)):
            raise
        splits = _synthetic_fallback(d, err, kwargs)
    return _with_label_noise(splits, d, seed)


def _synthetic_fallback(d: DatasetSettings, err: DataMissing, kwargs: dict[str, Any]) -> Splits:
    """Synthetic data in place of a dataset absent from the default location (the demo's
    ``dataset.fallback_synthetic``), as many training images as ``dataset.subset`` asks for
    (else 4096); said loudly, and named ``synthetic (fallback for <dataset>)`` so that
    results.json and every report row show it."""
    log.warning("NOTICE: %s -- FALLING BACK TO SYNTHETIC DATA (dataset.fallback_synthetic="
                "true): these results are NOT %s, and synthetic data shows nothing about "
                "SAM: it only checks that the pipeline runs", err, d.name)
    size = (d.subset or 4096, d.test_subset or 1024)
    splits = load_dataset("synthetic", "", synthetic_size=size, **kwargs)
    splits.name, splits.fallback = f"synthetic (fallback for {d.name})", str(err)
    splits.source = f"SYNTHETIC fallback, {d.name} absent; {splits.source}"
    return splits


def _with_label_noise(splits: Splits, d: DatasetSettings, seed: int) -> Splits:
    """``splits`` with symmetric noise on its training labels when ``dataset.label_noise``
    > 0, seeded by ``dataset.noise_seed`` (null: the run seed). Applied after the
    validation split, so held-out and test labels stay clean."""
    fraction, mode = d.label_noise, d.label_noise_mode
    if fraction:
        noise_seed = seed if d.noise_seed is None else d.noise_seed
        splits.train_y, splits.label_noise = add_label_noise(
            splits.train_y, splits.num_classes, fraction, mode, noise_seed)
        record = splits.label_noise
        splits.source += (f"; {record['changed']} of {len(splits.train_y)} train labels "
                          f"noisy ({mode}, p={fraction}, noise_seed={noise_seed})")
    return splits


def make_synthetic(seed: int, n_train: int, n_test: int, num_classes: int = 10) -> Splits:
    """CIFAR-shaped data that a small net learns in a few epochs, generated from `seed`.

    Each class is a fixed random low-frequency colour pattern (a 4x4 grid upsampled to
    32x32); an image is its class pattern plus per-pixel Gaussian noise.
    """
    if n_train < 1 or n_test < 1:
        raise UserError(f"synthetic_size=({n_train}, {n_test}): both sizes must be >= 1")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = 0.2 + 0.6 * patterns[y] + 0.2 * torch.randn(n, 3, 32, 32, generator=g)
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    pixels = train_x.float().div(255).transpose(0, 1).reshape(3, -1)
    return Splits(
        train_x, train_y, test_x, test_y, num_classes,
        mean=_stats(pixels.mean(1)), std=_stats(pixels.std(1)),
        name="synthetic", source=f"synthetic (seed={seed}, {n_train} train, {n_test} test)",
    )


def _stats(t: Tensor) -> Stats:
    a, b, c = (round(float(v), 4) for v in t)
    return a, b, c


# The globals a genuine CIFAR pickle names: numpy's array reconstruction (numpy.core before
# numpy 2, numpy._core since); dicts, lists, strings and numbers need none.
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"),
                  ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class _CifarUnpickler(pickle.Unpickler):
    """pickle's unpickler that resolves only `_CIFAR_GLOBALS`, so a crafted file in place of
    a CIFAR batch is refused (one UserError line) before it can call anything."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # torchvision's encoding: str keys
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise UserError(f"{self.path}: refuses to unpickle {module}.{name} (a CIFAR batch "
                        "holds only arrays): use the original CIFAR files or dataset.verify=true")


def _unpickle(path: Path) -> Any:
    """The object pickled in CIFAR file `path`, read by `_CifarUnpickler`."""
    with open(path, "rb") as f:
        return _CifarUnpickler(f, path).load()


def _reader(base: type[CIFAR10], verify: bool) -> type[CIFAR10]:
    """torchvision's CIFAR class (md5-verified: only the official files are unpickled), or
    for verify=False one that reads the same arrays, targets and classes through
    `_unpickle`, since unchecked files may be anyone's pickles."""
    if verify:
        return base

    class Unverified(base):  # type: ignore[valid-type, misc]
        def __init__(self, root: str, train: bool = True) -> None:  # torchvision's steps
            VisionDataset.__init__(self, root)
            self.train = train
            folder = Path(self.root, self.base_folder)
            files = self.train_list if train else self.test_list
            entries = [_unpickle(folder / f) for f, _ in files]
            data = np.vstack([e["data"] for e in entries]).reshape(-1, 3, 32, 32)
            self.data = data.transpose((0, 2, 3, 1))  # HWC, a view as torchvision's
            self.targets = [t for e in entries
                            for t in (e["labels"] if "labels" in e else e["fine_labels"])]
            self.classes = _unpickle(folder / self.meta["filename"])[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


def _load_cifar(name: str, data_dir: str, download: bool, verify: bool) -> Splits:
    base, pretty, num_classes = _CIFAR[name]
    root = Path(data_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"data_dir '{root}' is a file: set data_dir=<folder holding "
                        f"{base.base_folder}> (or env SAM_DATA)")
    names = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    folder = root / base.base_folder
    if download:  # torchvision's own download, only when the files are absent
        download_files(pretty, root, base.base_folder, lambda: files_present(folder, names),
                       lambda: base(str(root), train=False, download=True), base.url)
    reader = _reader(base, verify)
    try:
        train = reader(str(root), train=True)
        test = reader(str(root), train=False)
    except UserError:  # a refused pickle, already one line
        raise
    except Exception as e:  # explain what went wrong in one line, then keep the cause
        raise _explain(base, pretty, root, verify, e) from e

    def tensors(ds: CIFAR10) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    mean, std = CIFAR_STATS[name]
    folder = root / base.base_folder
    check = "md5 verified" if verify else "md5 not verified"
    return Splits(
        *tensors(train), *tensors(test), num_classes, mean, std,
        name=name, source=f"torchvision {base.__name__} from '{folder}' ({check})",
    )


def _explain(
    base: type[CIFAR10], pretty: str, root: Path, verify: bool, err: Exception
) -> UserError:
    """Turn a failure to read CIFAR into a one-line UserError naming the problem and fix
    (`DataMissing` when files are absent)."""
    folder = root / base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    if not files_present(folder, files):
        return DataMissing(missing_message(pretty, root, base.base_folder,
                                           "dataset.download=false"))
    if verify:
        sums = base.train_list + base.test_list + [[base.meta["filename"], base.meta["md5"]]]
        bad = [f for f, md5 in sums if not check_integrity(str(folder / f), md5)]
        if bad:
            return UserError(
                f"{pretty} checksum failed for {', '.join(bad)} in '{folder}': re-download it, "
                "or set dataset.verify=false to skip the md5 check for re-packed copies"
            )
    for f in files:
        try:
            entry = _unpickle(folder / f)
            if not isinstance(entry, dict):
                raise TypeError(f"expected a dict, got {type(entry).__name__}")
        except UserError as e:
            return e
        except Exception as e:
            return UserError(
                f"cannot read {pretty} file '{folder / f}' ({type(e).__name__}: {e}): "
                "it is corrupt or truncated; replace it with a fresh copy"
            )
    return UserError(f"cannot read {pretty} from '{folder}' ({type(err).__name__}: {err})")


def _subset_and_split(s: Splits, subset: int | None, val_fraction: float) -> Splits:
    n = len(s.train_x)
    if subset is not None:
        if not 1 <= subset <= n:
            raise UserError(f"dataset.subset={subset} is out of range: use 1..{n} or null")
        s.train_x, s.train_y, n = s.train_x[:subset], s.train_y[:subset], subset
        s.source += f"; first {subset} train images"
    if val_fraction:
        n_val = round(n * val_fraction)
        if not 0.0 < val_fraction < 1.0 or not 0 < n_val < n:
            raise UserError(
                f"dataset.val_fraction={val_fraction} leaves {n_val} of {n} images for "
                "validation: use a fraction in (0, 1) that keeps both parts non-empty, or 0"
            )
        s.test_x, s.test_y = s.train_x[n - n_val :], s.train_y[n - n_val :]
        s.train_x, s.train_y = s.train_x[: n - n_val], s.train_y[: n - n_val]
        s.eval_split = "val"
        s.source += f"; eval on last {n_val} train images (val_fraction={val_fraction})"
    return s
