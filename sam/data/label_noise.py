"""Symmetric label noise on the training labels (paper section 3.3, Table 4).

A fraction p of the training images, chosen uniformly without replacement, gets a new label:
mode "uniform" redraws it uniformly from all C classes (so about p * (C - 1) / C of the
labels actually change: the usual "symmetric noise" of the label-noise literature), mode
"flip" from the C - 1 other classes (every chosen label changes). Both draws come from a
generator seeded by ``noise_seed`` alone, so every run with the same training set and
noise seed (SGD and SAM of one seed) trains on the same noisy labels, and a resumed run
rebuilds them exactly.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from sam.errors import UserError

NOISE_MODES = ("uniform", "flip")


def check_label_noise(fraction: object, mode: object) -> None:
    """UserError unless 0 <= fraction < 1 (a number) and mode is one of NOISE_MODES."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
            or not 0.0 <= fraction < 1.0:
        raise UserError(f"dataset.label_noise={fraction!r}: must be a fraction in [0, 1), "
                        "e.g. 0.4 for 40% noisy training labels")
    if mode not in NOISE_MODES:
        raise UserError(f"dataset.label_noise_mode={mode!r}: use one of "
                        f"{', '.join(NOISE_MODES)}")


def label_hash(labels: Tensor) -> str:
    """The first 16 hex digits of SHA-256 over the labels as little-endian int64."""
    data = labels.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def add_label_noise(
    labels: Tensor, num_classes: int, fraction: float, mode: str = "uniform", seed: int = 0
) -> tuple[Tensor, dict]:
    """Noisy copy of ``labels`` (int64, N) and what was done.

    round(fraction * N) indices are chosen by a permutation; each gets a label drawn
    uniformly from the C classes ("uniform") or from the C - 1 classes other than its own
    ("flip": the own label + U{1..C-1}, mod C). Returns the new labels and the record
    {fraction, mode, seed, chosen, changed, hash} (hash: ``label_hash`` of the new labels).
    """
    check_label_noise(fraction, mode)
    if num_classes < 2:
        raise UserError(f"label noise needs >= 2 classes, the dataset has {num_classes}")
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    chosen = torch.randperm(n, generator=g)[: round(fraction * n)]
    noisy = labels.clone()
    if mode == "uniform":
        noisy[chosen] = torch.randint(0, num_classes, (len(chosen),), generator=g)
    else:
        shift = torch.randint(1, num_classes, (len(chosen),), generator=g)
        noisy[chosen] = (labels[chosen] + shift) % num_classes
    record = {"fraction": fraction, "mode": mode, "seed": seed, "chosen": len(chosen),
              "changed": int((noisy != labels).sum()), "hash": label_hash(noisy)}
    return noisy, record
