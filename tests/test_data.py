"""Tests for sam.data: CIFAR loading through torchvision, synthetic data, augmentation, loaders."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from cifar_files import write_fake_cifar10, write_fake_cifar100
from torchvision.transforms import v2

from sam.data import (
    CIFAR_STATS,
    AutoAugmentLoader,
    DeviceLoader,
    _AADataset,
    apply_crop_flip,
    apply_cutout,
    crop_flip_params,
    cutout_params,
    load_dataset,
    make_loader,
    make_synthetic,
    random_crop_flip,
    shard_rows,
)
from sam.errors import UserError


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_fake_cifar10(root), write_fake_cifar100(root)


def _same(t: torch.Tensor, a: np.ndarray) -> bool:
    return t.shape == a.shape and bool((t.numpy() == a).all())


# ------------------------------------------------------------------------------ loading


def test_cifar10_reads_exact_pixels_and_labels(fake_cifar):
    root, c10, _ = fake_cifar
    s = load_dataset("cifar10", str(root), verify=False)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert _same(s.train_x, c10["train_x"]) and _same(s.train_y, c10["train_y"])
    assert _same(s.test_x, c10["test_x"]) and _same(s.test_y, c10["test_y"])
    assert (s.num_classes, s.name, s.eval_split) == (10, "cifar10", "test")
    assert (s.mean, s.std) == CIFAR_STATS["cifar10"]
    assert str(root) in s.source and "not verified" in s.source


def test_cifar100_reads_exact_pixels_and_fine_labels(fake_cifar):
    root, _, c100 = fake_cifar
    s = load_dataset("cifar100", str(root), verify=False)
    assert _same(s.train_x, c100["train_x"]) and _same(s.train_y, c100["train_y"])
    assert _same(s.test_x, c100["test_x"]) and _same(s.test_y, c100["test_y"])
    assert s.num_classes == 100 and (s.mean, s.std) == CIFAR_STATS["cifar100"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_verify_rejects_wrong_checksums(fake_cifar, name):
    with pytest.raises(UserError, match=r"checksum failed.*dataset\.verify=false"):
        load_dataset(name, str(fake_cifar[0]), verify=True)


def test_missing_data_names_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="CIFAR-10 not found") as e:
        load_dataset("cifar10", "nowhere")
    msg = str(e.value)
    assert f"'{tmp_path / 'nowhere'}'" in msg and "cifar-10-batches-py" in msg
    assert "download=true" in msg and "\n" not in msg


def test_failed_download_is_a_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    monkeypatch.delenv("SAM_OFFLINE")  # conftest's guard would refuse before torchvision
    with pytest.raises(UserError, match="CIFAR-100 not found.*download failed"):
        load_dataset("cifar100", str(tmp_path), download=True)


def test_corrupt_pickle_names_the_file(tmp_path):
    write_fake_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path), verify=False)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="cifar10, cifar100, svhn, fashion_mnist, synthetic"):
        load_dataset("mnist", ".")


def test_subset_and_val_fraction(fake_cifar):
    root, c10, _ = fake_cifar
    s = load_dataset("cifar10", str(root), verify=False, subset=20)
    assert _same(s.train_x, c10["train_x"][:20]) and _same(s.test_y, c10["test_y"])
    v = load_dataset("cifar10", str(root), verify=False, subset=20, val_fraction=0.25)
    assert v.eval_split == "val" and "val" in v.source
    assert _same(v.train_x, c10["train_x"][:15]) and _same(v.train_y, c10["train_y"][:15])
    assert _same(v.test_x, c10["train_x"][15:20]) and _same(v.test_y, c10["train_y"][15:20])


@pytest.mark.parametrize("kwargs", [{"subset": 0}, {"subset": 31}, {"val_fraction": 1.0},
                                    {"val_fraction": -0.1}, {"val_fraction": 0.001}])
def test_bad_subset_or_val_fraction(fake_cifar, kwargs):
    with pytest.raises(UserError):
        load_dataset("cifar10", str(fake_cifar[0]), verify=False, **kwargs)


def test_synthetic_is_deterministic():
    a = load_dataset("synthetic", "unused", seed=3, synthetic_size=(64, 32))
    b = load_dataset("synthetic", "unused", seed=3, synthetic_size=(64, 32))
    c = load_dataset("synthetic", "unused", seed=4, synthetic_size=(64, 32))
    assert a.train_x.shape == (64, 3, 32, 32) and a.test_x.shape == (32, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.num_classes == 10
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.train_x, c.train_x)
    pixels = a.train_x.float().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(torch.tensor(a.mean), pixels.mean(1), atol=1e-3)
    assert torch.allclose(torch.tensor(a.std), pixels.std(1), atol=1e-3)


def test_synthetic_is_learnable():
    """Nearest class mean on 8x8-pooled images, fit on train, is far above chance on test."""
    s = make_synthetic(0, 1024, 256)
    pool = lambda x: torch.nn.functional.avg_pool2d(x.float(), 4).flatten(1)  # noqa: E731
    tr, te = pool(s.train_x), pool(s.test_x)
    means = torch.stack([tr[s.train_y == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(te, means).argmin(1) == s.test_y).float().mean()
    assert accuracy > 0.8


# ------------------------------------------------------------------------- augmentation


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("pad_mode, tv_mode", [("reflect", "reflect"), ("zero", "constant")])
def test_random_crop_flip_matches_torchvision_reference(pad_mode, tv_mode):
    x = _images(64)
    top, left, flip = crop_flip_params(64, torch.Generator().manual_seed(5))
    assert top.min() >= 0 and top.max() <= 8 and flip.any() and not flip.all()
    out = random_crop_flip(x, torch.Generator().manual_seed(5), pad_mode=pad_mode)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(64):
        padded = TF.pad(x[i], [4], fill=0, padding_mode=tv_mode)
        ref = TF.crop(padded, int(top[i]), int(left[i]), 32, 32)
        if flip[i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[i], ref), i


def test_crop_flip_extremes_reflect_the_border_without_repeating_it():
    x = _images(1).expand(2, -1, -1, -1)
    corners, flip = torch.tensor([0, 8]), torch.tensor([False, False])
    out = apply_crop_flip(x, corners, corners, flip)  # reflect: the default, as official
    # top-left crop: padded rows 0..3 are image rows 4, 3, 2, 1 (row 0 is not repeated)
    assert torch.equal(out[0, :, :4, 4:], x[0, :, [4, 3, 2, 1], :28])
    assert torch.equal(out[0, :, 4:, :4], x[0, :, :28, [4, 3, 2, 1]])
    # bottom-right crop: padded rows 32..35 are image rows 30, 29, 28, 27
    assert torch.equal(out[1, :, 28:, :28], x[0, :, [30, 29, 28, 27], 4:])


def test_crop_flip_extremes_pad_black():
    x = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    corners, flip = torch.tensor([0, 8]), torch.tensor([False, True])
    out = apply_crop_flip(x, corners, corners, flip, pad_mode="zero")
    assert (out[0, :, :4] == 0).all() and (out[0, :, :, :4] == 0).all()
    assert (out[0, :, 4:, 4:] == 255).all()
    # bottom-right crop, then flipped: black rows at the bottom, black columns on the left
    assert (out[1, :, 28:] == 0).all() and (out[1, :, :, :4] == 0).all()
    assert (out[1, :, :28, 4:] == 255).all()


def _cutout_reference(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for i in range(len(x)):
        y0, y1 = max(int(cy[i]) - 8, 0), min(int(cy[i]) + 8, 32)
        x0, x1 = max(int(cx[i]) - 8, 0), min(int(cx[i]) + 8, 32)
        out[i, :, y0:y1, x0:x1] = 0
    return out


def test_cutout_zeroes_the_clipped_square():
    x = torch.randn(5, 3, 32, 32) + 10  # no zeros of its own
    cy, cx = torch.tensor([0, 31, 16, 8, 3]), torch.tensor([0, 31, 16, 24, 30])
    out = apply_cutout(x, cy, cx)
    assert torch.equal(out, _cutout_reference(x, cy, cx))
    assert (out == 0).sum(dim=(1, 2, 3)).tolist() == [3 * n for n in (64, 81, 256, 256, 110)]

    x = torch.randn(200, 3, 32, 32) + 10
    cy, cx = cutout_params(200, 32, 32, torch.Generator().manual_seed(1))
    assert cy.min() >= 0 and cy.max() <= 31 and cx.min() >= 0 and cx.max() <= 31
    assert len(set(zip(cy.tolist(), cx.tolist(), strict=True))) > 150  # drawn, not fixed
    assert torch.equal(apply_cutout(x, cy, cx), _cutout_reference(x, cy, cx))


# ------------------------------------------------------------------------------ loaders


def _loader(x, y, **kw) -> DeviceLoader:
    args = dict(batch_size=16, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3)
    return DeviceLoader(x, y, **(args | kw))


def test_device_loader_shapes_and_normalization():
    x, y = _images(100), torch.arange(100)
    pixels = x.float().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    loader = _loader(x, y, mean=mean, std=std, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 6
    for xb, yb in batches:
        assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.shape == (16,) and yb.dtype == torch.int64
        assert torch.allclose(xb, (x[yb].float() / 255 - torch.tensor(mean).view(3, 1, 1))
                              / torch.tensor(std).view(3, 1, 1), atol=1e-5)
    full = _loader(x, y, mean=mean, std=std, batch_size=100, shuffle=False)
    xb = next(iter(full))[0].transpose(0, 1).reshape(3, -1)
    assert torch.allclose(xb.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(xb.std(1), torch.ones(3), atol=1e-4)


def test_device_loader_epochs_are_permutations_and_reproducible():
    x, y = _images(50), torch.arange(50)
    loader = _loader(x, y, drop_last=False, augment="cutout", seed=7)
    assert len(loader) == 4
    loader.set_epoch(3)
    first = list(loader)
    labels = torch.cat([yb for _, yb in first])
    assert sorted(labels.tolist()) == list(range(50))
    assert [len(yb) for _, yb in first] == [16, 16, 16, 2]

    again = _loader(x, y, drop_last=False, augment="cutout", seed=7)
    again.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again.set_epoch(4)
    assert not torch.equal(labels, torch.cat([yb for _, yb in again]))
    assert loader.epoch == 4  # a full pass advances the epoch
    loader.set_epoch(3)
    next(iter(loader))  # an interrupted pass does not, and the next pass starts afresh
    assert torch.equal(next(iter(loader))[0], first[0][0])


def test_device_loader_no_shuffle_and_augment_keeps_labels():
    x, y = _images(32), torch.arange(32)
    plain = list(_loader(x, y, shuffle=False))
    basic = list(_loader(x, y, shuffle=False, augment="basic"))
    assert torch.equal(torch.cat([yb for _, yb in plain]), y)
    assert torch.equal(plain[0][1], basic[0][1]) and not torch.equal(plain[0][0], basic[0][0])


def test_bad_loader_arguments():
    x, y = _images(10), torch.arange(10)
    with pytest.raises(UserError, match="unknown augment"):
        _loader(x, y, augment="mixup")
    with pytest.raises(UserError, match="batch_size"):
        _loader(x, y, batch_size=11)
    with pytest.raises(UserError, match="none, basic, cutout, autoaugment"):
        make_loader(x, y, batch_size=4, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3,
                    augment="mixup", shuffle=True, drop_last=True, seed=0)


def test_autoaugment_loader():
    x, y = _images(24), torch.arange(24)

    def make(num_workers: int = 0) -> AutoAugmentLoader:
        loader = make_loader(x, y, batch_size=8, device="cpu", mean=(0.5,) * 3,
                             std=(0.25,) * 3, augment="autoaugment", shuffle=True,
                             drop_last=False, seed=1, num_workers=num_workers)
        assert isinstance(loader, AutoAugmentLoader)
        return loader

    loader = make()
    loader.set_epoch(2)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    for xb, yb in batches:
        assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.dtype == torch.int64
        assert ((xb == 0).all(dim=1).flatten(1).sum(1) > 0).all()  # cutout hit every image
    assert sorted(torch.cat([yb for _, yb in batches]).tolist()) == list(range(24))
    assert loader.epoch == 3 and not torch.equal(batches[0][0], next(iter(loader))[0])
    again = make(num_workers=2)  # per-sample seeds: same batches whatever the worker count
    again.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(batches, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_autoaugment_runs_before_crop_and_flip_with_grey_fill():
    """The official SAM order (AutoAugment, then the basic flip and crop), and the
    AutoAugment reference's grey fill for rotate/shear/translate."""
    steps = _AADataset(_images(2), torch.arange(2)).transform.transforms
    assert [type(t).__name__ for t in steps] == ["AutoAugment", "RandomHorizontalFlip",
                                                 "RandomCrop"]
    assert steps[0].policy == v2.AutoAugmentPolicy.CIFAR10 and steps[0].fill == 128
    assert steps[2].padding_mode == "reflect" and list(steps[2].padding) == [4, 4, 4, 4]
    zero = _AADataset(_images(2), torch.arange(2), pad_mode="zero").transform.transforms[2]
    assert zero.padding_mode == "constant" and zero.fill == 0


def test_shard_rows_are_tensor_splits():
    for n in range(9):
        for world in range(1, 5):
            parts = torch.arange(n).tensor_split(world)
            for rank in range(world):
                lo, hi = shard_rows(n, rank, world)
                assert torch.equal(torch.arange(lo, hi), parts[rank]), (n, rank, world)


def test_autoaugment_set_shard_checks_the_rank():
    loader = make_loader(_images(8), torch.arange(8), batch_size=4, device="cpu",
                         mean=(0.5,) * 3, std=(0.25,) * 3, augment="autoaugment",
                         shuffle=True, drop_last=True, seed=0)
    assert isinstance(loader, AutoAugmentLoader)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        loader.set_shard(2, 2)


# -------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_cifar10_from_shared_copy(real_cifar_root):
    with pytest.raises(UserError, match="dataset.verify=false"):
        load_dataset("cifar10", str(real_cifar_root))
    s = load_dataset("cifar10", str(real_cifar_root), verify=False)
    assert s.train_x.shape == (50000, 3, 32, 32) and s.test_x.shape == (10000, 3, 32, 32)
    assert s.train_y.bincount().tolist() == [5000] * 10
    mean = s.train_x.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR_STATS["cifar10"][0]), atol=1e-3)
