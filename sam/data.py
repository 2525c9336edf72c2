"""CIFAR-10/100 and synthetic data, plus batched on-device augmentation.

Images stay uint8 (N, 3, 32, 32) until a loader normalizes a batch on the device, so a
whole CIFAR training set (150 MiB) sits on the GPU once and an epoch is gathers and
elementwise kernels, with no per-sample Python. The exception is AutoAugment, whose
per-image random policy runs per sample in DataLoader workers (`AutoAugmentLoader`).

Randomness is seeded from (seed, epoch) only, so a resumed run replays the same batches.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import v2

from sam.errors import UserError

DATASETS = ("cifar10", "cifar100", "synthetic")
AUGMENTS = ("none", "basic", "cutout", "autoaugment")
# How the 4-px crop pads: "reflect" mirrors the border (no edge repeat), as the official
# SAM code (tf.pad mode REFLECT); "zero" pads black, as torchvision's RandomCrop(32, 4).
PAD_MODES = ("reflect", "zero")

# Published per-channel statistics of the training sets (pixel values scaled to [0, 1]).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR = {"cifar10": (CIFAR10, "CIFAR-10", 10), "cifar100": (CIFAR100, "CIFAR-100", 100)}

Stats = tuple[float, float, float]


@dataclass
class Splits:
    """A dataset in memory: uint8 images (N, 3, 32, 32) and int64 labels on the CPU.

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
) -> Splits:
    """Load `name` ("cifar10", "cifar100" or "synthetic") as uint8 CPU tensors.

    CIFAR is read by torchvision from `data_dir` (the folder holding cifar-10-batches-py or
    cifar-100-python); `verify=False` skips torchvision's md5 check, for re-packed copies.
    `subset` keeps the first N training images; `val_fraction` > 0 then holds out the last
    fraction of them as the evaluation set in place of the test set.
    """
    if name in _CIFAR:
        splits = _load_cifar(name, data_dir, download, verify)
    elif name == "synthetic":
        splits = make_synthetic(seed, *synthetic_size)
    else:
        choices = ", ".join(DATASETS)
        raise UserError(f"unknown dataset {name!r}: set dataset.name to one of {choices}")
    return _subset_and_split(splits, subset, val_fraction)


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


def _reader(base: type[CIFAR10], verify: bool) -> type[CIFAR10]:
    """torchvision's CIFAR class, or one that only checks the files exist (verify=False)."""
    if verify:
        return base

    class Unverified(base):  # type: ignore[valid-type, misc]
        def _check_integrity(self) -> bool:
            folder = Path(self.root, self.base_folder)
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(Path(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


def _load_cifar(name: str, data_dir: str, download: bool, verify: bool) -> Splits:
    base, pretty, num_classes = _CIFAR[name]
    root = Path(data_dir).expanduser().resolve()
    reader = _reader(base, verify)
    try:
        train = reader(str(root), train=True, download=download)
        test = reader(str(root), train=False)
    except Exception as e:  # explain what went wrong in one line, then keep the cause
        raise _explain(base, pretty, root, download, verify, e) from e

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
    base: type[CIFAR10], pretty: str, root: Path, download: bool, verify: bool, err: Exception
) -> UserError:
    """Turn a failure to read CIFAR into a one-line UserError naming the problem and fix."""
    folder = root / base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    if any(not (folder / f).is_file() for f in files):
        tried = f" (download failed: {type(err).__name__}: {err})" if download else ""
        return UserError(
            f"{pretty} not found under '{root}'{tried}: set dataset.data_dir=<dir containing "
            f"{base.base_folder}> (or env SAM_DATA), or dataset.download=true when online"
        )
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
            with open(folder / f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            if not isinstance(entry, dict):
                raise TypeError(f"expected a dict, got {type(entry).__name__}")
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


# ----------------------------------------------------------------------- augmentation


def crop_flip_params(
    n: int, generator: torch.Generator, padding: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw per-image (top, left, flip) for `apply_crop_flip` on `generator`'s device.

    top/left are crop offsets into the padded image, in [0, 2 * padding].
    """
    dev = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    return top, left, flip


def _reflect(i: Tensor, n: int) -> Tensor:
    """Indices in [-(n-1), 2n-2] mirrored into [0, n) without repeating the edge:
    -1 -> 1, n -> n - 2 (numpy's and torch's "reflect")."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def apply_crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int = 4,
                    pad_mode: str = "reflect") -> Tensor:
    """Pad `x` (N, C, H, W) by `padding` (`pad_mode`: "reflect" or "zero"), crop H x W at
    (top, left) of the padded image, mirror where `flip`.

    Batched with one gather from `x` itself (the padded image is never built); run it on
    uint8 images, so that zero padding is black.
    """
    n, c, h, w = x.shape
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than it, got {h}x{w}")
    check_pad_mode(pad_mode)
    rows = top[:, None] + torch.arange(h, device=x.device) - padding  # (N, H), in x's frame
    cols = left[:, None] + torch.arange(w, device=x.device) - padding  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if pad_mode == "reflect":
        src_rows, src_cols = _reflect(rows, h), _reflect(cols, w)
    else:
        src_rows, src_cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = x[batch, chan, src_rows[:, None, :, None], src_cols[:, None, None, :]]
    if pad_mode == "zero":
        outside_rows = ((rows < 0) | (rows >= h))[:, None, :, None]
        outside_cols = ((cols < 0) | (cols >= w))[:, None, None, :]
        out = out.masked_fill(outside_rows | outside_cols, 0)
    return out


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4,
                     pad_mode: str = "reflect") -> Tensor:
    """Random `padding`-px padded crop + horizontal flip of each image in `x` (N, C, H, W)."""
    params = crop_flip_params(len(x), generator, padding)
    return apply_crop_flip(x, *params, padding=padding, pad_mode=pad_mode)


def cutout_params(n: int, h: int, w: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw per-image Cutout centres (row, col), uniform over the H x W pixels."""
    dev = generator.device
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    return cy, cx


def apply_cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int = 16) -> Tensor:
    """Zero a size x size square centred at (cy, cx) in each image, clipped at the borders.

    Rows cy - size//2 .. cy + size//2 - 1 (and the same for columns), as in DeVries &
    Taylor's reference code.
    """
    h, w = x.shape[-2:]
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    half = size // 2
    in_rows = (ar_h >= cy[:, None] - half) & (ar_h < cy[:, None] + size - half)  # (N, H)
    in_cols = (ar_w >= cx[:, None] - half) & (ar_w < cx[:, None] + size - half)  # (N, W)
    box = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(box, 0)


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch), with no collisions in practice."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------- loaders


class Normalize:
    """uint8 batch on the device -> (x / 255 - mean) / std as float, plus Cutout when
    asked (the last step of every training and evaluation batch).

    `part=(start, size)` says that `x` holds rows start .. start + len(x) - 1 of a batch
    of `size`: Cutout is then drawn for the whole batch and its rows of `x` applied, so
    the result is exactly those rows of the whole batch's result (used by a sharded
    `AutoAugmentLoader`, which fetches only one rank's rows).
    """

    def __init__(self, device: torch.device, mean: Stats, std: Stats, cutout: bool) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.cutout = cutout

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
    ) -> Tensor:
        x = x.float().sub_(self.mean).div_(self.std)
        if not self.cutout:
            return x
        start, size = part or (0, len(x))
        cy, cx = cutout_params(size, *x.shape[-2:], generator)
        rows = slice(start, start + len(x))
        return apply_cutout(x, cy[rows], cx[rows])


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: use a positive batch size")
    batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    if batches == 0:
        raise UserError(
            f"batch_size={batch_size} exceeds the {n} images with drop_last: "
            "use a smaller batch size or more data"
        )
    return batches


class DeviceLoader:
    """Batches from a uint8 image set held on `device`, augmented and normalized there.

    augment: "none", "basic" (4-px padded random crop + horizontal flip on uint8, padding
    by `pad_mode`, then normalize) or "cutout" (basic, normalize, then a 16x16 zero
    square). With `drop_last` the last partial batch of each (reshuffled) epoch is left
    out, as in the official code. All randomness comes from one generator reseeded from
    (seed, epoch) when an epoch starts, so the same epoch always yields bit-identical
    batches on one device.
    Iterating to the end advances the epoch; `set_epoch` sets it explicitly (on resume).
    """

    def __init__(
        self,
        x_uint8: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device | str,
        mean: Stats,
        std: Stats,
        augment: str = "none",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        pad_mode: str = "reflect",
    ) -> None:
        if augment not in ("none", "basic", "cutout"):
            raise UserError(
                f"unknown augment {augment!r}: use one of none, basic, cutout "
                "(or autoaugment via make_loader)"
            )
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)
        self.y = y.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed, self.pad_mode = augment, seed, check_pad_mode(pad_mode)
        self._len = _num_batches(len(self.x), batch_size, drop_last)
        self._finish = Normalize(self.device, mean, std, cutout=augment == "cutout")
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the data epoch `epoch` (reseeds the generator)."""
        self.epoch = epoch
        self.generator.manual_seed(_seed(self.seed, epoch))

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.set_epoch(self.epoch)
        g, n, bs = self.generator, len(self.x), self.batch_size
        order = (
            torch.randperm(n, generator=g, device=self.device)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        for i in range(self._len):
            idx = order[i * bs : (i + 1) * bs]
            x = self.x[idx]
            if self.augment != "none":
                x = random_crop_flip(x, g, pad_mode=self.pad_mode)
            yield self._finish(x, g), self.y[idx]
        self.epoch += 1


def check_pad_mode(pad_mode: str) -> str:
    """``pad_mode`` if it is one of PAD_MODES, else UserError naming the setting."""
    if pad_mode not in PAD_MODES:
        raise UserError(f"augment.pad_mode={pad_mode!r}: use one of {', '.join(PAD_MODES)}")
    return pad_mode


class _AADataset(torch.utils.data.Dataset):
    """Per-sample AutoAugment(CIFAR10) + flip + RandomCrop(32, 4) on uint8 CHW tensors.

    The order of the official SAM code (AutoAugment, then its basic crop and flip), and
    AutoAugment's geometric operations fill with grey 128, as the AutoAugment reference
    does; the crop pads by `pad_mode`. Indexed by (index, seed): each sample's transform
    runs under its own seed, so results do not depend on num_workers or on which worker
    draws which sample.
    """

    def __init__(self, x: Tensor, y: Tensor, pad_mode: str = "reflect") -> None:
        self.x, self.y = x, y
        self.transform = v2.Compose([
            v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=128),
            v2.RandomHorizontalFlip(),
            v2.RandomCrop(32, padding=4, padding_mode=
                          "reflect" if check_pad_mode(pad_mode) == "reflect" else "constant"),
        ])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        i, seed = item
        with torch.random.fork_rng(devices=[]):  # leave the caller's CPU RNG untouched
            torch.default_generator.manual_seed(seed)
            return self.transform(self.x[i]), self.y[i]


class _EpochSampler(torch.utils.data.Sampler):
    """Yields (index, per-sample seed) in an order drawn from (seed, epoch)."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return zip(order.tolist(), seeds.tolist(), strict=True)


def shard_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of `tensor_split(world)[rank]` of n rows: the first n % world ranks
    get n // world + 1 rows, the others n // world (possibly none)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + int(rank < extra)


class _ShardBatchSampler(torch.utils.data.Sampler):
    """One rank's rows of each batch of `BatchSampler(sampler, batch_size, drop_last)`.

    Of a global batch of `size` (index, seed) pairs it yields rows `shard_rows(size, rank,
    world)`, skipping empty ones, so the DataLoader fetches and augments only those
    samples. The default rank 0 of world 1 yields the global batches themselves.
    """

    def __init__(self, sampler: _EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world = 0, 1

    def spans(self) -> list[tuple[int, int, int]]:
        """(lo, hi, size) of every global batch of an epoch: this rank's rows [lo, hi)."""
        full, rest = divmod(len(self.sampler), self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])
        return [(*shard_rows(size, self.rank, self.world), size) for size in sizes]

    def __len__(self) -> int:
        return sum(hi > lo for lo, hi, _ in self.spans())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        items = iter(self.sampler)
        for lo, hi, size in self.spans():
            batch = list(itertools.islice(items, size))
            if hi > lo:
                yield batch[lo:hi]


class AutoAugmentLoader:
    """DeviceLoader's interface for AutoAugment, which must run per image on the CPU.

    A DataLoader applies AutoAugment(CIFAR10 policy) + RandomHorizontalFlip +
    RandomCrop(32, padding=4) (`_AADataset`) per sample (uint8, in `num_workers`
    processes); each batch is then moved to `device`, normalized and given Cutout there,
    as in the SAM paper's AutoAugment runs (the official code adds Cutout as a batch-level
    option).

    `set_shard(rank, world)` makes it fetch, augment and yield only one rank's rows of
    every batch, bit for bit the `tensor_split(world)[rank]` slices of its batches
    unsharded (`sam.distributed.ShardedLoader` calls it under DDP).
    """

    def __init__(
        self,
        x_uint8: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device | str,
        mean: Stats,
        std: Stats,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        pad_mode: str = "reflect",
    ) -> None:
        self.device = torch.device(device)
        self.seed = seed
        self._len = _num_batches(len(x_uint8), batch_size, drop_last)
        self.sampler = _EpochSampler(len(x_uint8), shuffle, seed)
        self.batches = _ShardBatchSampler(self.sampler, batch_size, drop_last)
        on_cuda = self.device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            _AADataset(x_uint8.cpu(), y.cpu(), pad_mode),
            batch_sampler=self.batches,
            num_workers=num_workers,
            pin_memory=on_cuda,
            persistent_workers=num_workers > 0,
        )
        self._non_blocking = on_cuda
        self._finish = Normalize(self.device, mean, std, cutout=True)
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the data epoch `epoch` (reseeds all randomness)."""
        self.epoch = self.sampler.epoch = epoch
        self.generator.manual_seed(_seed(self.seed, epoch, 1))

    def set_shard(self, rank: int, world: int) -> None:
        """From the next pass on, yield only rows `shard_rows(len(batch), rank, world)` of
        each global batch (skipping empty ones), fetching and augmenting only those.

        Samples are seeded per (index, seed), and Cutout is drawn for the global batch
        (`Normalize`'s `part`), so the rows equal those of the unsharded batches. Only
        batches with fewer rows than `world` can be skipped (the short last batch, or all
        of them when batch_size < world), so no batch is yielded after a skipped one and
        none misses a Cutout draw. len() still counts the global batches.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        self.batches.rank, self.batches.world = rank, world

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.set_epoch(self.epoch)
        parts = [(lo, size) for lo, hi, size in self.batches.spans() if hi > lo]
        for part, (x, y) in zip(parts, self.loader, strict=True):
            x = x.to(self.device, non_blocking=self._non_blocking)
            y = y.to(self.device, non_blocking=self._non_blocking)
            yield self._finish(x, self.generator, part), y
        self.epoch += 1


def make_loader(
    splits_x: Tensor,
    splits_y: Tensor,
    *,
    batch_size: int,
    device: torch.device | str,
    mean: Stats,
    std: Stats,
    augment: str,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    num_workers: int = 0,
    pad_mode: str = "reflect",
) -> DeviceLoader | AutoAugmentLoader:
    """A loader yielding normalized (x, y) batches on `device` for augment in `AUGMENTS`.

    "none"/"basic"/"cutout" run batched on the device (`DeviceLoader`, which ignores
    num_workers); "autoaugment" = AutoAugment + flip + crop per image on CPU workers, then
    normalize + Cutout on the device (`AutoAugmentLoader`). The crop pads by `pad_mode`.
    """
    if augment == "autoaugment":
        return AutoAugmentLoader(
            splits_x, splits_y, batch_size, device, mean, std,
            shuffle=shuffle, drop_last=drop_last, seed=seed, num_workers=num_workers,
            pad_mode=pad_mode,
        )
    if augment not in AUGMENTS:
        raise UserError(f"unknown augment {augment!r}: set it to one of {', '.join(AUGMENTS)}")
    return DeviceLoader(
        splits_x, splits_y, batch_size, device, mean, std,
        augment=augment, shuffle=shuffle, drop_last=drop_last, seed=seed, pad_mode=pad_mode,
    )
