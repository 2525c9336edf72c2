"""Mixup (Zhang et al., ICLR 2018, arXiv 1710.09412) on the training batches:
``augment.mixup_alpha`` > 0 (0 = off).

For a batch of B inputs x and labels y (C classes), one draw per batch

    lam ~ Beta(alpha, alpha),   pi = a uniform permutation of the B rows,
    x~ = lam x + (1 - lam) x[pi],   t = lam onehot(y) + (1 - lam) onehot(y[pi]),

and the training loss CE(f(x~), t) = lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[pi]), since
cross-entropy is linear in its target: the reference implementation's
(facebookresearch/mixup-cifar10, train.py ``mixup_data`` / ``mixup_criterion``: one lambda
per batch from ``np.random.beta``, ``torch.randperm``). The batch leaves the loader mixed,
with the soft targets t as a (B, C) tensor, so everything downstream sees one batch:

- SAM's two passes (and a variant's) take the same x~ and t: nothing is drawn again inside
  the step;
- m-sharpness shards, micro-batches (``accumulate``) and DDP ranks cut the MIXED batch: the
  whole (global) batch is mixed first, so a partner may sit in another shard, and a DDP run
  mixes as its one-process run does;
- label smoothing a smooths the mixed target, (1 - a) t + a / C (``F.cross_entropy``'s rule
  for probability targets); noisy labels (Table 4) and bootstrap labels are what is mixed.

The draw of batch k of epoch e comes from a generator seeded by (seed, e, k) alone, so a run
resumed inside an epoch mixes the rest of it exactly as the uninterrupted run did, whatever
the loader drew before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def mixup_draw(alpha: float, batch: int, seed: int, epoch: int, step: int) -> tuple[float, Tensor]:
    """(lam, pi) of batch ``step`` (from 0) of ``epoch``: lam ~ Beta(alpha, alpha) and a
    uniform permutation of ``batch`` rows, from a NumPy generator seeded by
    (seed, epoch, step) only."""
    digest = hashlib.sha256(repr(("mixup", seed, epoch, step)).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    lam = float(rng.beta(alpha, alpha))
    return lam, torch.from_numpy(rng.permutation(batch))


def mix(x: Tensor, y: Tensor, lam: float, perm: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(lam x + (1 - lam) x[perm], lam onehot(y) + (1 - lam) onehot(y[perm])): the mixed
    inputs and their soft targets (B, C), in x's dtype. ``y`` may already be soft (B, C)."""
    perm = perm.to(x.device)
    target = y if y.ndim == 2 else F.one_hot(y, num_classes)
    target = target.to(x.dtype)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def hard_labels(y: Tensor) -> Tensor:
    """Class labels of a batch's targets: ``y`` itself, or for soft (B, C) targets the class
    of the larger weight (a Mixup batch: the image's own label when lam >= 1/2, else its
    partner's). The training error of a Mixup run is counted against these."""
    return y.argmax(1) if y.ndim == 2 else y


class MixupLoader:
    """A training loader whose batches leave mixed: (x~, t) with soft targets t (B, C).

    ``loader`` is the run's loader (``position``/``resume_at``/``set_epoch`` are passed on,
    so a checkpoint's position keeps its format); this wrapper counts the epoch and step
    to seed each batch's draw (``mixup_draw``). It has no ``set_shard``: under DDP
    ``ShardedLoader`` slices the mixed global batch."""

    def __init__(self, loader: Any, alpha: float, num_classes: int, seed: int) -> None:
        if not alpha > 0:
            raise ValueError(f"mixup alpha must be > 0, got {alpha}")
        self.loader, self.alpha, self.num_classes, self.seed = loader, alpha, num_classes, seed
        self.epoch, self._start = 0, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """The next pass is epoch ``epoch``, from its first batch."""
        self.loader.set_epoch(epoch)
        self.epoch, self._start = epoch, 0

    def position(self) -> dict:
        """The wrapped loader's position (its epoch and step seed the draws too)."""
        return self.loader.position()

    def resume_at(self, position: dict) -> None:
        """The next pass continues epoch ``position["epoch"]`` after ``position["step"]``
        batches, mixing them as the interrupted pass would have."""
        self.loader.resume_at(position)
        self.epoch, self._start = position["epoch"], position["step"]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, step, self._start = self.epoch, self._start, 0
        for x, y in self.loader:
            lam, perm = mixup_draw(self.alpha, len(x), self.seed, epoch, step)
            yield mix(x, y, lam, perm, self.num_classes)
            step += 1
        self.epoch = epoch + 1
