"""Large-image datasets read from their files: the fine-tuning sets of the SAM paper's
Tables 2-3 through torchvision (Flowers102, StanfordCars, FGVCAircraft, Food101,
OxfordIIITPet), a generic ImageFolder and ImageNet.

Unlike CIFAR (`sam.data.datasets`: one uint8 tensor in memory) these stay files: an image
is decoded and transformed when a DataLoader worker asks for it (`sam.data.image_loader`).
`load_image_sets` opens a dataset's training and evaluation splits in torchvision's own
on-disk layout under ``data_dir`` and wraps them with the transforms of `train_transform`
(RandomResizedCrop + horizontal flip) and `eval_transform` (Resize + CenterCrop), which
deliver uint8 (C, H, W) tensors; the loader normalizes batches on the device.

Layouts (``root`` = data_dir; imagefolder and imagenet: data_dir/<dataset.root>):
  flowers102     root/flowers-102/{jpg/, imagelabels.mat, setid.mat} (md5-checked .mat)
  stanford_cars  root/stanford_cars/{devkit/, cars_train/, cars_test/,
                 cars_test_annos_withlabels.mat}
  fgvc_aircraft  root/fgvc-aircraft-2013b/data/{images/, variants.txt, images_variant_*.txt}
  food101        root/food-101/{images/, meta/train.json, meta/test.json}
  oxford_pets    root/oxford-iiit-pet/{images/, annotations/trainval.txt, test.txt}
  imagefolder    root/train/<class>/*, root/val/<class>/* (torchvision ImageFolder)
  imagenet       root/{train,val}/<wnid>/* with root/meta.bin or the devkit archive
                 (torchvision ImageNet), else the same folders read as an ImageFolder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets as tvd
from torchvision.transforms import v2

from sam.data.fetch import DataMissing
from sam.data.fetch import download as download_files
from sam.errors import UserError

IMAGE_SETS = ("flowers102", "stanford_cars", "fgvc_aircraft", "food101", "oxford_pets",
              "imagefolder", "imagenet")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's, [0, 1]

# name -> (torchvision class, pretty name, its folder under root, its splits, downloadable)
_TORCHVISION: dict[str, tuple[type, str, str, tuple[str, ...], bool]] = {
    "flowers102": (tvd.Flowers102, "Flowers-102", "flowers-102", ("train", "val", "test"),
                   True),
    "stanford_cars": (tvd.StanfordCars, "Stanford Cars", "stanford_cars", ("train", "test"),
                      False),
    "fgvc_aircraft": (tvd.FGVCAircraft, "FGVC-Aircraft", "fgvc-aircraft-2013b",
                      ("train", "val", "trainval", "test"), True),
    "food101": (tvd.Food101, "Food-101", "food-101", ("train", "test"), True),
    "oxford_pets": (tvd.OxfordIIITPet, "Oxford-IIIT Pets", "oxford-iiit-pet",
                    ("trainval", "test"), True),
}


class ImageSets(NamedTuple):
    """A dataset's two splits (transforms applied) and what results.json says of them."""

    train: Dataset
    eval: Dataset
    num_classes: int
    name: str
    source: str = ""


class Transformed(Dataset):
    """``base`` (PIL image, label) items, the ``indices`` of them (all when None), as
    (transform(image), int label)."""

    def __init__(self, base: Any, transform: Any, indices: list[int] | None = None) -> None:
        self.base, self.transform = base, transform
        self.indices = list(range(len(base))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image), int(label)


INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR,
                  "bicubic": v2.InterpolationMode.BICUBIC}


def train_transform(image_size: int, scale: tuple[float, float] = (0.08, 1.0),
                    flip: bool = True, interpolation: str = "bilinear") -> v2.Compose:
    """Inception-style training crop: a random area fraction in ``scale`` and aspect ratio
    in [3/4, 4/3] resized to ``image_size`` squared (antialiased ``interpolation``), then
    a horizontal flip with probability 1/2 (none when not ``flip``); uint8 (C, H, W)."""
    crop = v2.RandomResizedCrop(image_size, scale=scale, antialias=True,
                                interpolation=INTERPOLATIONS[interpolation])
    return v2.Compose([v2.ToImage(), crop, v2.RandomHorizontalFlip(0.5 if flip else 0.0),
                       v2.ToPureTensor()])


def eval_transform(image_size: int, resize: int, interpolation: str = "bilinear") -> v2.Compose:
    """Evaluation view: the shorter side resized to ``resize`` (antialiased
    ``interpolation``), then the central ``image_size`` squared; uint8 (C, H, W)."""
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True,
                                               interpolation=INTERPOLATIONS[interpolation]),
                       v2.CenterCrop(image_size), v2.ToPureTensor()])


def spread(n: int, k: int | None, key: str = "dataset.subset") -> list[int] | None:
    """k indices spread evenly over range(n): floor(i n / k) for i < k (None: all).
    Files are usually sorted by class, so the first k would keep few classes."""
    if k is None:
        return None
    if not 1 <= k <= n:
        raise UserError(f"{key}={k} is out of range: use 1..{n} or null")
    return [i * n // k for i in range(k)]


def load_image_sets(name: str, data_dir: str, *, num_classes: int, train: Any, evaluation: Any,
                    root: str | None = None, download: bool = False, verify: bool = True,
                    train_split: str = "train", test_split: str = "test",
                    subset: int | None = None, test_subset: int | None = None) -> ImageSets:
    """Open dataset ``name`` (one of IMAGE_SETS) under ``data_dir`` and apply the
    transforms ``train`` and ``evaluation`` to its two splits.

    Splits are torchvision's split names, joined by "+" for a union ("train+val");
    imagefolder and imagenet read the folders train/ and val/. ``subset``/``test_subset``
    keep that many images spread evenly over each split (`spread`). ``num_classes`` must
    equal the classes the files define (the model's head is sized by it).
    """
    base = Path(data_dir).expanduser().resolve()
    if name in _TORCHVISION:
        tr, ev, classes, where = _open_torchvision(name, base, download, verify,
                                                   train_split, test_split)
    elif name == "imagefolder":
        tr, ev, classes, where = _open_folders(base / (root or "imagefolder"), "imagefolder")
    elif name == "imagenet":
        tr, ev, classes, where = _open_imagenet(base / (root or "imagenet"))
    else:
        raise UserError(f"unknown image dataset {name!r}: use one of {', '.join(IMAGE_SETS)}")
    if classes != num_classes:
        raise UserError(f"dataset.num_classes={num_classes} but {where} defines {classes} "
                        f"classes: set dataset.num_classes={classes}")
    keep_train = spread(len(tr), subset)
    keep_eval = spread(len(ev), test_subset, "dataset.test_subset")
    sets = ImageSets(Transformed(tr, train, keep_train), Transformed(ev, evaluation, keep_eval),
                     classes, name)
    source = (f"{where}: {len(sets.train)} train images ({train_split}), {len(sets.eval)} "
              f"eval images ({test_split})")
    if subset is not None or test_subset is not None:
        source += f"; subsets spread evenly (subset={subset}, test_subset={test_subset})"
    return sets._replace(source=source)


# ---------------------------------------------------------------------------- opening


def _open_torchvision(name: str, base: Path, download: bool, verify: bool, train_split: str,
                      test_split: str) -> tuple[Any, Any, int, str]:
    cls, pretty, folder, splits, downloadable = _TORCHVISION[name]
    for split in (*train_split.split("+"), *test_split.split("+")):
        if split not in splits:
            raise UserError(f"{pretty} has no split {split!r}: use {', '.join(splits)} (or "
                            "a union such as train+val) in dataset.train_split/test_split")
    where = f"torchvision {cls.__name__} from '{base / folder}'"
    if name == "flowers102" and not verify:
        cls, where = _unverified_flowers(), where + " (md5 not verified)"
    if not (base / folder).is_dir():
        if download and downloadable:
            download_files(pretty, base, folder, (base / folder).is_dir,
                           lambda: cls(str(base), split=splits[-1], download=True),
                           f"torchvision {cls.__name__}")
        else:
            raise DataMissing(_missing(pretty, base / folder, download, downloadable))

    def open_split(spec: str) -> Any:
        parts = [_read(cls, pretty, base / folder, verify, str(base), split=s)
                 for s in spec.split("+")]
        return parts[0] if len(parts) == 1 else _Union(parts)

    train, evaluation = open_split(train_split), open_split(test_split)
    return train, evaluation, len(_classes(train)), where


def _read(cls: type, pretty: str, folder: Path, verify: bool, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``: one split through torchvision, its failures as one
    UserError line naming ``folder``."""
    try:
        return cls(*args, **kwargs)
    except Exception as err:
        fix = ("set dataset.verify=false to skip the md5 check of re-packed files, or replace "
               "them" if verify and cls is tvd.Flowers102 else "replace the damaged files")
        msg = " ".join(str(err).split())
        raise UserError(f"cannot read {pretty} from '{folder}' ({type(err).__name__}: "
                        f"{msg}): {fix}") from err


def _classes(ds: Any) -> list:
    if isinstance(ds, _Union):
        ds = ds.datasets[0]
    return ds.classes


class _Union(ConcatDataset):
    """Splits of one dataset read as one (labels shared)."""


def _unverified_flowers() -> type:
    """Flowers102 checking that its .mat files exist instead of their md5 (re-packed copies;
    the tests' files)."""

    class _UnverifiedFlowers102(tvd.Flowers102):
        def _check_integrity(self) -> bool:
            return self._images_folder.is_dir() and all(
                (self._base_folder / f).is_file() for f, _ in
                (self._file_dict["label"], self._file_dict["setid"]))

    _UnverifiedFlowers102.__name__ = "Flowers102_Unverified"
    return _UnverifiedFlowers102


def _missing(pretty: str, folder: Path, download: bool, downloadable: bool) -> str:
    if not downloadable:
        how = ("it cannot be downloaded (its URL is gone): put a copy there in torchvision's "
               "StanfordCars layout (devkit/, cars_train/, cars_test/, "
               "cars_test_annos_withlabels.mat)")
    elif download:
        how = "the download did not run"
    else:
        how = ("dataset.download=false: run once online with dataset.download=true "
               "(torchvision fetches it there), or put its files there yourself")
    return (f"{pretty} not found at '{folder}' ({how}); to use another folder set "
            "data_dir=DIR or the environment variable SAM_DATA=DIR")


def _open_folders(root: Path, label: str) -> tuple[Any, Any, int, str]:
    """root/train and root/val as torchvision ImageFolders with the same class folders."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataMissing(f"{label}: no folder '{root / split}': put the images in "
                              f"{root}/train/<class>/ and {root}/val/<class>/ (set data_dir"
                              f"=DIR or dataset.root=NAME for another place)")
    train, evaluation = (_read(tvd.ImageFolder, label, root / s, False, str(root / s))
                         for s in ("train", "val"))
    if train.classes != evaluation.classes:
        only = sorted(set(train.classes) ^ set(evaluation.classes))[:3]
        raise UserError(f"{label}: train/ and val/ under '{root}' have different class "
                        f"folders (e.g. {', '.join(only)}): give both the same class folders")
    return train, evaluation, len(train.classes), f"torchvision ImageFolder '{root}'"


def _open_imagenet(root: Path) -> tuple[Any, Any, int, str]:
    """torchvision's ImageNet where its meta.bin or devkit archive is (class names from
    the devkit), else train/ and val/ of wnid folders read as ImageFolders; the labels are
    the same either way: the index of the wnid in sorted order."""
    devkit = tvd.imagenet.ARCHIVE_META["devkit"][0]
    if not ((root / "meta.bin").is_file() or (root / devkit).is_file()):
        return _open_folders(root, "ImageNet")
    if not all((root / s).is_dir() or (root / tvd.imagenet.ARCHIVE_META[s][0]).is_file()
               for s in ("train", "val")):
        raise DataMissing(f"ImageNet: neither '{root}/train' and '{root}/val' nor their "
                          f"archives ({tvd.imagenet.ARCHIVE_META['train'][0]}, ...): put "
                          "them there (ImageNet cannot be downloaded automatically)")
    train, evaluation = (_read(tvd.ImageNet, "ImageNet", root, False, str(root), split=s)
                         for s in ("train", "val"))
    return train, evaluation, len(train.classes), f"torchvision ImageNet '{root}'"


def default_workers() -> int:
    """DataLoader workers when the config names none: min(8, CPUs this process may use)."""
    return min(8, len(os.sched_getaffinity(0)))
