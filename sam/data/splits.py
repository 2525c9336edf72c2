"""The in-memory dataset type every loader of ``sam.data`` shares: ``Splits`` and ``Stats``."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

Stats = tuple[float, ...]  # one value per channel


@dataclass
class Splits:
    """A dataset in memory: uint8 images (N, C, H, W) and int64 labels on the CPU
    (CIFAR, SVHN: 3 x 32 x 32; Fashion-MNIST: 1 x 28 x 28).

    `test_x`/`test_y` are the evaluation set: the official test set when `eval_split` is
    "test", or the held-out tail of the training set when it is "val".
    """

    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    num_classes: int
    mean: Stats
    std: Stats
    name: str
    source: str
    eval_split: str = "test"
    label_noise: dict | None = None  # add_label_noise's record when the labels are noisy
    fallback: str | None = None  # why synthetic data replaced the dataset (fallback)
