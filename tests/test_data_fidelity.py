"""sam.data trained "exactly as google-research/sam": the batch-level Cutout, the official
AutoAugment in the device loader (order, seeding, resume, DDP slices), the official
normalisation constants, and the augment group's settings (fidelity=official / pytorch)."""

from __future__ import annotations

import pytest
import torch
from helpers import settings_of
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sam import distributed
from sam.data import (
    CIFAR_STATS,
    AutoAugmentLoader,
    DeviceLoader,
    Normalize,
    apply_crop_flip,
    apply_cutout,
    augment_options,
    crop_flip_params,
    cutout_params,
    load_dataset,
    make_loader,
    official_autoaugment,
)
from sam.errors import UserError

MEAN, STD = (0.5,) * 3, (0.25,) * 3  # no normalised pixel is exactly 0: (p - 127.5) / 63.75


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std in float64, independently of Normalize."""
    return (x.double() / 255 - 0.5) / 0.25


def _copy(g: torch.Generator) -> torch.Generator:
    """A generator in `g`'s current state (the draws `g` would make next)."""
    return torch.Generator(device=g.device).set_state(g.get_state())


def _loader(x, augment="autoaugment", **kw) -> DeviceLoader | AutoAugmentLoader:
    args = dict(batch_size=16, device="cpu", mean=MEAN, std=STD, augment=augment,
                shuffle=True, drop_last=True, seed=4, policy="official")
    return make_loader(x, torch.arange(len(x)), **(args | kw))


# ------------------------------------------------------------------ batch-level Cutout


def test_batch_cutout_zeroes_one_hand_computed_square_in_every_image():
    x = torch.randn(4, 3, 32, 32) + 10  # no zeros of its own
    out = apply_cutout(x, torch.tensor([3]), torch.tensor([30]))
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[0:11, 22:32] = True  # rows [max(0, 3-8), 3+8), columns [30-8, min(32, 30+8))
    assert torch.equal(out == 0, mask.expand(4, 3, 32, 32))
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])
    inside = apply_cutout(x, torch.tensor([16]), torch.tensor([9]))
    assert (inside == 0).sum().item() == 4 * 3 * 16 * 16
    assert (inside[:, :, 8:24, 1:17] == 0).all()


def test_normalize_draws_one_centre_per_batch_or_per_image():
    x = _images(64)
    batch = Normalize(torch.device("cpu"), MEAN, STD, cutout=True, cutout_per_image=False)
    g = torch.Generator().manual_seed(9)
    cy, cx = (int(v) for v in cutout_params(1, 32, 32, _copy(g)))
    out = batch(x, g)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[max(cy - 8, 0):min(cy + 8, 32), max(cx - 8, 0):min(cx + 8, 32)] = True
    assert torch.equal(out == 0, mask.expand_as(out))
    assert torch.allclose(out.double()[:, :, ~mask], _normalise(x)[:, :, ~mask], atol=1e-6)
    # part=(start, size): the same one centre, whatever rows a rank holds
    assert torch.equal(batch(x[5:9], torch.Generator().manual_seed(9), part=(5, 64)), out[5:9])
    # cutout_per_image (the default) keeps DeVries & Taylor's: one centre per image
    per_image = Normalize(torch.device("cpu"), MEAN, STD, cutout=True)(x, g)
    assert len({tuple(m.nonzero()[0].tolist()) for m in (per_image == 0).all(1)}) > 20


def test_per_image_cutout_loader_draws_as_before():
    """cutout_per_image=True replays the draws of the loader before the option existed:
    order, then per batch crops and flips, then one Cutout centre per image."""
    x = _images(40)
    loader = DeviceLoader(x, torch.arange(40), 16, "cpu", MEAN, STD, augment="cutout", seed=2,
                          cutout_per_image=True)
    g = _copy(loader.generator)
    order = torch.randperm(40, generator=g)
    for i, (xb, yb) in enumerate(loader):
        idx = order[16 * i:16 * (i + 1)]
        crop = apply_crop_flip(x[idx], *crop_flip_params(16, g))
        want = apply_cutout(_normalise(crop), *cutout_params(16, 32, 32, g))
        assert torch.equal(yb, idx) and torch.equal(xb == 0, want == 0)
        assert torch.allclose(xb.double(), want, atol=1e-6)


def test_batch_cutout_loaders_share_one_square_per_batch():
    for loader in (_loader(_images(48), augment="cutout", cutout_per_image=False),
                   _loader(_images(48), cutout_per_image=False, policy="torchvision")):
        for xb, _ in loader:
            zero = (xb == 0).all(1)  # (N, H, W)
            assert zero[0].sum() >= 64 and (zero == zero[0]).all()


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_autoaugment_loader_keeps_the_batch_square(world):
    """The torchvision path fetches only a rank's rows; its batch Cutout is still drawn
    once for the global batch, so the rows equal the unsharded batches' slices."""
    x = _images(20)

    def make():
        return _loader(x, batch_size=6, policy="torchvision", cutout_per_image=False,
                       drop_last=False)

    full = list(make())
    for rank in range(world):
        sharded = distributed.ShardedLoader(make(), rank, world)
        assert sharded.loader_shards
        want = [(xb.tensor_split(world)[rank], yb.tensor_split(world)[rank]) for xb, yb in full]
        got = list(sharded)
        assert len(got) == len([w for w in want if len(w[1])])
        for (xg, yg), (xw, yw) in zip(got, [w for w in want if len(w[1])], strict=True):
            assert torch.equal(xg, xw) and torch.equal(yg, yw)


# ------------------------------------------------------- official AutoAugment, on device


def test_official_autoaugment_loader_first_batch_by_hand():
    """AutoAugment (own generator) on the uint8 batch, then crop + flip, then normalise,
    then one Cutout square: the order of the official code, with the loader's draws."""
    x = _images(64)
    loader = _loader(x, cutout_per_image=False)
    assert isinstance(loader, DeviceLoader) and loader.aa_generator is not None
    loader.set_epoch(1)
    g, aa = _copy(loader.generator), _copy(loader.aa_generator)
    xb, yb = next(iter(loader))
    idx = torch.randperm(64, generator=g)[:16]
    augmented = official_autoaugment(x[idx], aa)
    crop = apply_crop_flip(augmented, *crop_flip_params(16, g))
    want = apply_cutout(_normalise(crop), *cutout_params(1, 32, 32, g))
    assert torch.equal(yb, idx) and torch.equal(xb == 0, want == 0)
    assert torch.allclose(xb.double(), want, atol=1e-6)
    assert not torch.equal(augmented, x[idx])  # AutoAugment did change the batch
    # the AutoAugment stream is separate: the other draws are those of augment=cutout
    cut = _loader(x, augment="cutout", cutout_per_image=False)
    cut.set_epoch(1)
    assert torch.equal(next(iter(cut))[1], yb)


def test_official_autoaugment_loader_is_reproducible_and_resumes_exactly():
    x = _images(48)
    run = _loader(x)
    epochs = [list(run) for _ in range(3)]  # epochs 0, 1, 2
    assert run.epoch == 3
    resumed = _loader(x)
    resumed.set_epoch(2)  # what the trainer does when it resumes at epoch 2
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])
    other_seed = _loader(x, seed=5)
    assert not torch.equal(next(iter(other_seed))[0], epochs[0][0][0])


def test_official_autoaugment_loader_is_sliced_under_ddp():
    x = _images(40)
    full = list(_loader(x, batch_size=8))
    for rank in range(2):
        sharded = distributed.ShardedLoader(_loader(x, batch_size=8), rank, 2)
        assert not sharded.loader_shards  # the whole batch on every rank, then its rows
        for (xg, yg), (xf, yf) in zip(sharded, full, strict=True):
            assert torch.equal(xg, xf[4 * rank:4 * rank + 4])
            assert torch.equal(yg, yf[4 * rank:4 * rank + 4])


def test_torchvision_policy_takes_the_old_path():
    x = _images(24)
    new = _loader(x, batch_size=8, policy="torchvision", num_workers=0)
    old = AutoAugmentLoader(x, torch.arange(24), 8, "cpu", MEAN, STD, seed=4)
    assert isinstance(new, AutoAugmentLoader)
    for (xa, ya), (xb, yb) in zip(new, old, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    default = make_loader(x, torch.arange(24), batch_size=8, device="cpu", mean=MEAN,
                          std=STD, augment="autoaugment", shuffle=True, drop_last=True,
                          seed=4)
    assert isinstance(default, AutoAugmentLoader)  # callers that predate `policy`
    assert _loader(x, augment="basic").aa_generator is None


# ------------------------------------------------------------------------ settings


def _compose(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("fidelity, per_image, policy", [("official", False, "official"),
                                                         ("pytorch", True, "torchvision")])
def test_augment_group_follows_fidelity(fidelity, per_image, policy):
    aa = settings_of(_compose(f"fidelity={fidelity}", "augment=autoaugment")).augment
    assert augment_options(aa) == {"pad_mode": "reflect", "num_workers": 4,
                                   "cutout_per_image": per_image, "policy": policy}
    cut = augment_options(settings_of(_compose(f"fidelity={fidelity}", "augment=cutout")).augment)
    assert cut["cutout_per_image"] is per_image
    basic = augment_options(settings_of(_compose(f"fidelity={fidelity}", "augment=basic")).augment)
    assert basic == {"pad_mode": "reflect", "num_workers": 0, "cutout_per_image": True,
                     "policy": "torchvision"}  # absent keys: what runs had before them
    long_form = _compose(f"fidelity={fidelity}", "augment=autoaugment",
                         f"augment.policy={'official' if per_image else 'torchvision'}")
    assert augment_options(settings_of(long_form).augment)["policy"] != policy


@pytest.mark.parametrize("overrides, words", [
    (["augment=autoaugment", "augment.policy=foo"], "augment.policy='foo': use official or "
                                                    "torchvision"),
    (["augment=cutout", "augment.cutout_per_image=maybe"], "augment.cutout_per_image='maybe'"),
    (["augment=autoaugment", "augment.num_workers=-1"], "augment.num_workers=-1"),
    (["augment.pad_mode=edge"], "augment.pad_mode='edge'"),
])
def test_bad_augment_settings_are_user_errors(overrides, words):
    with pytest.raises(UserError, match=words) as err:
        augment_options(settings_of(_compose(*overrides)).augment)
    assert ": " in str(err.value) and "\n" not in str(err.value)


def test_loaders_refuse_bad_settings_where_they_are_used():
    x = _images(16)
    with pytest.raises(UserError, match="augment.policy='foo'"):
        _loader(x, policy="foo")
    with pytest.raises(UserError, match="augment.cutout_per_image=1"):
        _loader(x, augment="cutout", cutout_per_image=1)


# ------------------------------------------------------------------ normalisation


def test_cifar_stats_are_the_official_eight_digit_values():
    assert CIFAR_STATS["cifar10"] == ((0.49139968, 0.48215841, 0.44653091),
                                      (0.24703223, 0.24348513, 0.26158784))
    assert CIFAR_STATS["cifar100"] == ((0.50707516, 0.48654887, 0.44091784),
                                       (0.26733429, 0.25643846, 0.27615047))


@pytest.mark.slow
@pytest.mark.parametrize("name, atol", [
    ("cifar100", 6e-9),  # pixels bit-exact: equal to the 8 digits given
    ("cifar10", 1e-5),  # 86 training images of the offline copy came from a JPEG copy
])
def test_cifar_stats_match_the_real_training_sets(real_cifar_root, name, atol):
    """Mean and population std of every training pixel in [0, 1], per channel."""
    s = load_dataset(name, str(real_cifar_root), verify=False)
    pixels = s.train_x.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in CIFAR_STATS[name])
    assert torch.allclose(pixels.mean(1), mean, rtol=0, atol=atol)
    assert torch.allclose(pixels.std(1, correction=0), std, rtol=0, atol=atol)
    assert (s.mean, s.std) == CIFAR_STATS[name]
