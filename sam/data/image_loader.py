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
run's settings; `check_image_config` refuses what this path cannot do (one line each).
"""

from __future__ import annotations

import torch

from sam.data.image_sets import (
    IMAGE_SETS,
    IMAGENET_STATS,
    ImageSets,
    default_workers,
    eval_transform,
    load_image_sets,
    train_transform,
)
from sam.data.worker_loader import WorkerLoader
from sam.errors import UserError
from sam.settings import AugmentSettings, DatasetSettings

IMAGE_AUGMENTS = ("none", "basic", "cutout")  # none: the eval view; basic: crop + flip


class ImageLoader(WorkerLoader):
    """Normalized (x, y) batches on ``device`` from a Dataset of (uint8 (C, H, W), label),
    each item's transform under its own seed (`WorkerLoader`, whose arguments it takes)."""


# ---------------------------------------------------------------------------- from settings


def check_image_config(d: DatasetSettings, augment: str, sharpness_on: bool) -> None:
    """Refuse (one UserError line) what the DataLoader path cannot do with dataset ``d``:
    options that need the in-memory uint8 splits, AutoAugment, malformed image settings."""
    if d.name not in IMAGE_SETS:
        return
    memory = "needs the in-memory datasets (cifar10, cifar100, svhn, fashion_mnist)"
    if d.label_noise:
        raise UserError(f"dataset.label_noise with dataset={d.name}: label noise {memory}; "
                        "set dataset.label_noise=0")
    if d.val_fraction:
        raise UserError(f"dataset.val_fraction with dataset={d.name}: a held-out tail "
                        f"{memory}; set it 0 (imagefolder: put a val/ folder of your own)")
    if sharpness_on:
        raise UserError(f"sharpness.every / sharpness.epochs with dataset={d.name}: the "
                        f"per-epoch measurement {memory}; set sharpness.every=0 and "
                        "sharpness.epochs=[]")
    if d.fallback_synthetic:
        raise UserError(f"dataset.fallback_synthetic with dataset={d.name}: the synthetic "
                        "data is CIFAR-shaped; set it false")
    if augment not in IMAGE_AUGMENTS:
        raise UserError(f"augment={augment} with dataset={d.name}: the image path "
                        f"supports augment={', '.join(IMAGE_AUGMENTS)} (basic: random resized"
                        " crop + flip)")
    if d.num_classes is None:
        raise UserError(f"dataset.num_classes is not set for dataset={d.name}: set it to "
                        "the number of class folders under train/")
    image_stats(d)
    scale = d.crop_scale
    if len(scale) != 2 or not scale[0] <= scale[1]:
        raise UserError(f"dataset.crop_scale={list(scale)}: give [min, max] with "
                        "0 < min <= max <= 1 (fractions of the image area)")


def image_stats(d: DatasetSettings) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) an image dataset's batches are normalized with: ``dataset.mean`` /
    ``dataset.std``, ImageNet's where null; checked (3 values each)."""
    mean, std = (tuple(float(v) for v in given or fallback) for given, fallback in
                 ((d.mean, IMAGENET_STATS[0]), (d.std, IMAGENET_STATS[1])))
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"dataset.mean={list(mean)} / dataset.std={list(std)}: give 3 "
                        "values each (RGB, pixels in [0, 1]), std > 0")
    return mean, std


def image_loaders(d: DatasetSettings, augment: AugmentSettings, *, seed: int, batch_size: int,
                  eval_batch_size: int, device: torch.device,
                  ) -> tuple[ImageSets, ImageLoader, ImageLoader]:
    """Image dataset ``d`` and its training and evaluation loaders: training views by
    ``augment`` (basic/cutout: `train_transform`; none: the evaluation view), evaluation
    by `eval_transform`; reseeded from (``seed``, epoch)."""
    size, resize = d.image_size, d.resize or d.image_size
    view = eval_transform(size, resize, d.interpolation)
    crop = (train_transform(size, d.crop_scale, d.flip, d.interpolation)
            if augment.name != "none" else view)
    sets = load_image_sets(d.name, d.data_dir, num_classes=d.num_classes, train=crop,
                           evaluation=view, root=d.root, download=d.download,
                           verify=d.verify, train_split=d.train_split,
                           test_split=d.test_split, subset=d.subset,
                           test_subset=d.test_subset)
    mean, std = image_stats(d)
    workers = default_workers() if d.num_workers is None else d.num_workers
    common = dict(device=device, mean=mean, std=std, seed=seed, num_workers=workers)
    train = ImageLoader(sets.train, batch_size, shuffle=True, drop_last=True,
                        cutout=augment.name == "cutout",
                        cutout_per_image=augment.cutout_per_image, **common)
    evaluation = ImageLoader(sets.eval, eval_batch_size, shuffle=False, drop_last=False,
                             **common)
    return sets, train, evaluation
