"""The DataLoader path for large-image datasets (`sam.data.image_sets`): files decoded and
cropped in worker processes, normalized on the device.

`ImageLoader` has `DeviceLoader`'s interface (len, normalized float (x, y) batches on the
device, `set_epoch`, `position`/`resume_at`, `set_shard` for DDP), built on
torch.utils.data.DataLoader: ``num_workers`` processes decode and transform images
(`image_sets.train_transform`/`eval_transform`, uint8), batches come back in pinned
memory on CUDA and move with non-blocking copies, and `Normalize` turns them into
(x / 255 - mean) / std on the device (plus Cutout with augment=cutout).

Randomness replays: the order and one seed per sample are drawn from (seed, epoch)
(`_EpochSampler`, as `AutoAugmentLoader`), and each sample's transform runs under its own
seed, so batches depend on neither the number of workers nor which worker drew which
sample, and a resumed run sees the same crops. `image_loaders` builds both loaders from a
run's config; `check_image_config` refuses what this path cannot do (one line each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sam.data.image_sets import (
    IMAGE_SETS,
    IMAGENET_STATS,
    INTERPOLATIONS,
    ImageSets,
    default_workers,
    eval_transform,
    load_image_sets,
    train_transform,
)
from sam.data.worker_loader import WorkerLoader
from sam.errors import UserError

IMAGE_AUGMENTS = ("none", "basic", "cutout")  # none: the eval view; basic: crop + flip


class ImageLoader(WorkerLoader):
    """Normalized (x, y) batches on ``device`` from a Dataset of (uint8 (C, H, W), label),
    each item's transform under its own seed (`WorkerLoader`, whose arguments it takes)."""


# ---------------------------------------------------------------------------- from a config


def check_image_config(cfg: Any) -> None:
    """Refuse (one UserError line) what the DataLoader path cannot do: options that need
    the in-memory uint8 splits, AutoAugment, and malformed image settings."""
    d = cfg.dataset
    if d.name not in IMAGE_SETS:
        return
    memory = "needs the in-memory datasets (cifar10, cifar100, svhn, fashion_mnist)"
    if d.get("label_noise", 0.0):
        raise UserError(f"dataset.label_noise with dataset={d.name}: label noise {memory}; "
                        "set dataset.label_noise=0")
    if d.get("val_fraction", 0.0):
        raise UserError(f"dataset.val_fraction with dataset={d.name}: a held-out tail "
                        f"{memory}; set it 0 (imagefolder: put a val/ folder of your own)")
    if cfg.get("sharpness") is not None and cfg.sharpness.get("every", 0):
        raise UserError(f"sharpness.every with dataset={d.name}: the per-epoch measurement "
                        f"{memory}; set sharpness.every=0")
    if d.get("fallback_synthetic"):
        raise UserError(f"dataset.fallback_synthetic with dataset={d.name}: the synthetic "
                        "data is CIFAR-shaped; set it false")
    if cfg.augment.name not in IMAGE_AUGMENTS:
        raise UserError(f"augment={cfg.augment.name} with dataset={d.name}: the image path "
                        f"supports augment={', '.join(IMAGE_AUGMENTS)} (basic: random resized"
                        " crop + flip)")
    _options(d)


def image_stats(d: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) an image dataset's batches are normalized with: ``dataset.mean`` /
    ``dataset.std``, ImageNet's where null; checked (3 values each, std > 0)."""
    mean, std = (tuple(float(v) for v in d.get(k) or s) for k, s in
                 (("mean", IMAGENET_STATS[0]), ("std", IMAGENET_STATS[1])))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"dataset.mean={list(mean)} / dataset.std={list(std)}: give 3 "
                        "values each (RGB, pixels in [0, 1]), std > 0")
    return mean, std


def _options(d: Mapping[str, Any]) -> dict[str, Any]:
    """The image settings of the dataset group, checked."""
    def positive_int(key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"dataset.{key}={value!r}: must be a positive integer")
        return value

    if d.get("num_classes") is None:
        raise UserError(f"dataset.num_classes is not set for dataset={d['name']}: set it to "
                        "the number of class folders under train/")
    mean, std = image_stats(d)
    scale = tuple(float(v) for v in d.get("crop_scale") or (0.08, 1.0))
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise UserError(f"dataset.crop_scale={list(scale)}: give [min, max] with "
                        "0 < min <= max <= 1 (fractions of the image area)")
    workers = d.get("num_workers")
    if workers is None:
        workers = default_workers()
    elif not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise UserError(f"dataset.num_workers={workers!r}: must be an integer >= 0 or null "
                        "(min(8, CPUs))")
    interpolation = d.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"dataset.interpolation={interpolation!r}: use one of "
                        f"{', '.join(INTERPOLATIONS)}")
    size = positive_int("image_size", d.get("image_size", 224))
    return {"image_size": size, "resize": positive_int("resize", d.get("resize", size)),
            "mean": mean, "std": std, "scale": scale, "workers": workers,
            "flip": bool(d.get("flip", True)), "interpolation": interpolation}


def image_loaders(cfg: Any, device: torch.device) -> tuple[ImageSets, ImageLoader, ImageLoader]:
    """The run's image dataset (``cfg.dataset``) and its training and evaluation loaders:
    training views by ``cfg.augment`` (basic/cutout: `train_transform`; none: the
    evaluation view), evaluation by `eval_transform`; reseeded from (``cfg.seed``, epoch)."""
    check_image_config(cfg)
    d, o = cfg.dataset, _options(cfg.dataset)
    view = eval_transform(o["image_size"], o["resize"], o["interpolation"])
    crop = (train_transform(o["image_size"], o["scale"], o["flip"], o["interpolation"])
            if cfg.augment.name != "none" else view)
    sets = load_image_sets(d.name, d.data_dir, num_classes=d.num_classes, train=crop,
                           evaluation=view, root=d.get("root"),
                           download=bool(d.get("download", False)),
                           verify=bool(d.get("verify", True)),
                           train_split=d.get("train_split", "train"),
                           test_split=d.get("test_split", "test"),
                           subset=d.get("subset"), test_subset=d.get("test_subset"))
    common = dict(device=device, mean=o["mean"], std=o["std"], seed=cfg.seed,
                  num_workers=o["workers"])
    train = ImageLoader(sets.train, cfg.batch_size, shuffle=True, drop_last=True,
                        cutout=cfg.augment.name == "cutout",
                        cutout_per_image=cfg.augment.get("cutout_per_image", True), **common)
    evaluation = ImageLoader(sets.eval, cfg.eval_batch_size, shuffle=False, drop_last=False,
                             **common)
    return sets, train, evaluation
