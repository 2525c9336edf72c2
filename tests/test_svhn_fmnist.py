"""SVHN and Fashion-MNIST (paper Table 5): readers on tiny files in each dataset's real
on-disk format, their normalisation, augmentation switches, models, recipes, report."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from helpers import splits_of
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torchvision.datasets import SVHN, FashionMNIST

from sam.data import DeviceLoader, load_dataset, make_loader
from sam.data import device_loader as device_loader_module
from sam.data.fetch import DataMissing
from sam.data.torchvision_sets import OFFICIAL_STATS, channel_stats
from sam.errors import UserError
from sam.models import ShakeShake, WideResNet
from sam.report import main as report_main
from sam.report.paper import paper_cells
from sam.results import write_json
from sam.train import run, validate

SVHN_SIZES = {"train": 6, "extra": 9, "test": 5}
FMNIST_SIZES = {"train": 12, "t10k": 7}


# --------------------------------------------------------------------------- file writers


def write_svhn(root: Path, splits=("train", "extra", "test"), seed: int = 0) -> dict:
    """SVHN .mat files as the Stanford site serves them: X (32, 32, 3, N) uint8 (HWC x N),
    y (N, 1) uint8 with the digit 0 labelled 10. Returns the arrays as (N, C, H, W), 0..9."""
    rng = np.random.default_rng(seed)
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in splits:
        n = SVHN_SIZES[split]
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        digits = rng.integers(0, 10, size=n)
        digits[0] = 0  # make sure a 0 (stored as 10) is there
        scipy.io.savemat(folder / f"{split}_32x32.mat",
                         {"X": x, "y": np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]})
        out[split] = (np.stack([x[..., i].transpose(2, 0, 1) for i in range(n)]), digits)
    return out


def _idx(magic: int, shape: tuple[int, ...], data: np.ndarray) -> bytes:
    """An idx file: big-endian int32 magic and dimensions, then the uint8 values."""
    return struct.pack(f">{1 + len(shape)}i", magic, *shape) + data.astype(np.uint8).tobytes()


def write_fashion(root: Path, gz: bool = True, seed: int = 0) -> dict:
    """Fashion-MNIST idx files (images magic 2051, labels 2049), gzipped as served."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in FMNIST_SIZES.items():
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        for name, blob in ((f"{prefix}-images-idx3-ubyte", _idx(2051, (n, 28, 28), x)),
                           (f"{prefix}-labels-idx1-ubyte", _idx(2049, (n,), y))):
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
        out[prefix] = (x[:, None], y)
    return out


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of uint8 (N, C, H, W) / 255, in float64."""
    v = x.astype(np.float64) / 255
    return v.mean(axis=(0, 2, 3)), v.std(axis=(0, 2, 3))


@pytest.fixture
def svhn_root(tmp_path):
    return tmp_path / "data", write_svhn(tmp_path / "data")


@pytest.fixture
def fashion_root(tmp_path):
    return tmp_path / "data", write_fashion(tmp_path / "data")


# --------------------------------------------------------------------------- SVHN


def test_svhn_reads_train_then_extra_with_exact_pixels_labels_and_stats(svhn_root):
    root, files = svhn_root
    s = load_dataset("svhn", str(root), verify=False)
    train_x = np.concatenate([files["train"][0], files["extra"][0]])
    train_y = np.concatenate([files["train"][1], files["extra"][1]])
    assert s.train_x.dtype == torch.uint8 and tuple(s.train_x.shape) == (15, 3, 32, 32)
    assert np.array_equal(s.train_x.numpy(), train_x)
    assert np.array_equal(s.train_y.numpy(), train_y) and s.train_y[0] == 0  # 10 -> 0
    assert np.array_equal(s.test_x.numpy(), files["test"][0])
    assert np.array_equal(s.test_y.numpy(), files["test"][1])
    assert (s.name, s.num_classes, s.eval_split) == ("svhn", 10, "test")
    mean, std = numpy_stats(train_x)  # of train + extra, not of the test images
    assert np.allclose(s.mean, mean, rtol=0, atol=1e-12)
    assert np.allclose(s.std, std, rtol=0, atol=1e-12)
    assert "train+extra" in s.source and "15 training images" in s.source


def test_svhn_train_only_needs_no_extra_file_and_is_named_apart(tmp_path):
    files = write_svhn(tmp_path, splits=("train", "test"))
    s = load_dataset("svhn", str(tmp_path), verify=False, options={"extra": False})
    assert np.array_equal(s.train_x.numpy(), files["train"][0]) and s.name == "svhn_train"
    with pytest.raises(DataMissing, match="dataset.extra=false"):
        load_dataset("svhn", str(tmp_path), verify=False)  # extra asked for, absent


def test_svhn_absent_is_data_missing_naming_the_folder(tmp_path):
    with pytest.raises(DataMissing, match=str(tmp_path)) as err:
        load_dataset("svhn", str(tmp_path), download=False)
    assert "\n" not in str(err.value)


def test_svhn_verify_checks_torchvisions_md5(svhn_root, monkeypatch):
    root, _ = svhn_root
    with pytest.raises(UserError, match="checksum failed for train_32x32.mat.*verify=false"):
        load_dataset("svhn", str(root), verify=True)
    table = {k: [url, name, md5(root / "svhn" / name)]
             for k, (url, name, _) in SVHN.split_list.items()}
    monkeypatch.setattr(SVHN, "split_list", table)
    assert "(md5 verified)" in load_dataset("svhn", str(root), verify=True).source


def test_svhn_corrupt_file_is_named(svhn_root):
    root, _ = svhn_root
    (root / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="cannot read SVHN file .*test_32x32.mat") as err:
        load_dataset("svhn", str(root), verify=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["svhn", "fashion_mnist"])
def test_download_fetches_nothing_present_and_absent_files_go_through_fetch(tmp_path, name):
    """download=true: present files are read as they are (the suite is offline: any
    fetch would fail); absent ones reach sam.data.fetch, refused there (SAM_OFFLINE)."""
    write_svhn(tmp_path) if name == "svhn" else write_fashion(tmp_path)
    assert len(load_dataset(name, str(tmp_path), download=True, verify=False).train_x) > 0
    with pytest.raises(DataMissing, match="SAM_OFFLINE"):
        load_dataset(name, str(tmp_path / "empty"), download=True, verify=False)


def test_svhn_subset_and_validation_tail(svhn_root):
    root, files = svhn_root
    s = load_dataset("svhn", str(root), verify=False, subset=10, val_fraction=0.2)
    first10 = np.concatenate([files["train"][0], files["extra"][0]])[:10]
    assert np.array_equal(s.train_x.numpy(), first10[:8])
    assert np.array_equal(s.test_x.numpy(), first10[8:]) and s.eval_split == "val"


def test_official_stats_and_bad_options(svhn_root):
    root, _ = svhn_root
    s = load_dataset("svhn", str(root), verify=False, options={"stats": "official"})
    assert (s.mean, s.std) == OFFICIAL_STATS["svhn"]
    assert s.mean[0] == 0.43090966  # sam_jax/datasets/dataset_source.py:329
    with pytest.raises(UserError, match="dataset.stats='mnist'"):
        load_dataset("svhn", str(root), verify=False, options={"stats": "mnist"})
    with pytest.raises(UserError, match="dataset.extra='no'"):
        load_dataset("svhn", str(root), verify=False, options={"extra": "no"})


def test_channel_stats_is_exact_whatever_the_chunking():
    x = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = numpy_stats(x.numpy())
    for chunk in (1, 7, 1000):
        m, s = channel_stats(x, chunk=chunk)
        assert np.allclose(m, mean, rtol=0, atol=1e-14) and np.allclose(s, std, atol=1e-14)
    # a constant channel: std exactly 0 (no negative variance from rounding)
    m, s = channel_stats(torch.full((3, 1, 2, 2), 51, dtype=torch.uint8))
    assert m == (0.2,) and s == (0.0,)


# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_reads_gz_idx_files_as_one_channel_28x28(fashion_root):
    root, files = fashion_root
    s = load_dataset("fashion_mnist", str(root), verify=False)
    assert s.train_x.dtype == torch.uint8 and tuple(s.train_x.shape) == (12, 1, 28, 28)
    assert np.array_equal(s.train_x.numpy(), files["train"][0])
    assert np.array_equal(s.train_y.numpy(), files["train"][1])
    assert np.array_equal(s.test_x.numpy(), files["t10k"][0])
    assert np.array_equal(s.test_y.numpy(), files["t10k"][1])
    mean, std = numpy_stats(files["train"][0])
    assert len(s.mean) == 1 and abs(s.mean[0] - mean[0]) < 1e-12 and abs(s.std[0] - std[0]) < 1e-12
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # unpacked
    official = load_dataset("fashion_mnist", str(root), verify=False,
                            options={"stats": "official"})
    assert (official.mean, official.std) == ((0.1307,), (0.3081,))  # dataset_source.py:278


def test_fashion_mnist_unpacked_files_alone_read_without_verify(tmp_path):
    files = write_fashion(tmp_path, gz=False)
    s = load_dataset("fashion_mnist", str(tmp_path), verify=False, val_fraction=0.25)
    assert np.array_equal(s.train_x.numpy(), files["train"][0][:9])
    assert np.array_equal(s.test_x.numpy(), files["train"][0][9:]) and s.eval_split == "val"
    with pytest.raises(UserError, match="cannot be md5-checked.*verify=false"):
        load_dataset("fashion_mnist", str(tmp_path), verify=True)


def test_fashion_mnist_verify_checks_the_gz_md5(fashion_root, monkeypatch):
    root, _ = fashion_root
    with pytest.raises(UserError, match="checksum failed for train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", str(root), verify=True)
    raw = root / "FashionMNIST" / "raw"
    monkeypatch.setattr(FashionMNIST, "resources",
                        [(name, md5(raw / name)) for name, _ in FashionMNIST.resources])
    assert "(md5 verified)" in load_dataset("fashion_mnist", str(root), verify=True).source


def test_fashion_mnist_absent_or_corrupt(tmp_path):
    with pytest.raises(DataMissing, match="Fashion-MNIST not found"):
        load_dataset("fashion_mnist", str(tmp_path / "none"), download=False)
    write_fashion(tmp_path, gz=False)
    (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08")
    with pytest.raises(UserError, match="cannot read Fashion-MNIST") as err:
        load_dataset("fashion_mnist", str(tmp_path), verify=False)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- augmentation


def test_normalize_one_channel_against_float64():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.zeros(4, dtype=torch.long), 4, "cpu", (0.3,), (0.4,),
                          augment="none", shuffle=False)
    (out, _), = list(loader)
    ref = (x.double() / 255 - 0.3) / 0.4
    assert out.shape == (4, 1, 28, 28) and torch.allclose(out.double(), ref, atol=1e-5)


def _windows(img: np.ndarray, pad: int = 4) -> list[np.ndarray]:
    """Every H x W window of the reflect-padded image (numpy's pad, no edge repeat)."""
    p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    h, w = img.shape[1:]
    return [p[:, t:t + h, s:s + w] for t in range(2 * pad + 1) for s in range(2 * pad + 1)]


@pytest.mark.parametrize("flip", [True, False])
def test_flip_switch(flip):
    """flip=False: every image is an unmirrored crop window; flip=True mirrors some."""
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(64), 64, "cpu", (0.0,), (1 / 255,),
                          augment="basic", shuffle=False, flip=flip)
    (out, _), = list(loader)
    out = out.round().to(torch.uint8).numpy()
    mirrored = 0
    for img, src in zip(out, x.numpy(), strict=True):
        plain = any(np.array_equal(img, w) for w in _windows(src))
        mirror = any(np.array_equal(img, w) for w in _windows(src[:, :, ::-1]))
        assert plain or mirror
        mirrored += mirror and not plain
    assert (mirrored > 0) == flip


def test_svhn_autoaugment_uses_the_svhn_policy_without_crop_or_flip(monkeypatch):
    """aa_crop_flip=False (the official "aa-only"): AutoAugment (here recorded and left
    out), then no crop: pixels stay in place except the Cutout square."""
    policies = []

    def identity(x, generator, policy="cifar"):
        policies.append(policy)
        return x.clone()

    monkeypatch.setattr(device_loader_module, "official_autoaugment", identity)
    x = torch.randint(1, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loader = make_loader(x, torch.arange(8), batch_size=8, device="cpu", mean=(0.0,) * 3,
                         std=(1 / 255,) * 3, augment="autoaugment", shuffle=False,
                         drop_last=True, seed=0, policy="official", aa_policy="svhn",
                         aa_crop_flip=False)
    (out, _), = list(loader)
    kept = out != 0  # Cutout zeroes a square; the inputs are never 0
    assert policies == ["svhn"] and 0 < (~kept).sum() < out.numel()
    assert torch.equal(out[kept].round().to(torch.uint8), x[kept])


def test_autoaugment_refuses_grayscale():
    x = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(UserError, match="needs RGB"):
        make_loader(x, torch.zeros(4, dtype=torch.long), batch_size=2, device="cpu",
                    mean=(0.5,), std=(0.5,), augment="autoaugment", shuffle=True,
                    drop_last=True, seed=0)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("style", ["official", "pytorch"])
def test_wrn_and_shakeshake_take_one_channel_28x28(style):
    x = torch.randn(2, 1, 28, 28)
    for net in (WideResNet(10, 2, 10, style=style, in_channels=1),
                ShakeShake(8, 4, 10, style=style, in_channels=1)):
        assert net(x).shape == (2, 10) and net.conv1.in_channels == 1


# --------------------------------------------------------------------------- configs


def make(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("model", ["wrn28_10", "shakeshake26_2x96d"])
def test_dataset_configs_reach_the_models(model):
    fm = make("dataset=fashion_mnist", f"model={model}")
    sv = make("dataset=svhn", f"model={model}")
    assert fm.model.in_channels == 1 and sv.model.in_channels == 3
    assert make(f"model={model}").model.in_channels == 3  # CIFAR
    assert (sv.dataset.extra, sv.dataset.flip, sv.dataset.aa_policy) == (True, True, "svhn")
    assert sv.dataset.aa_crop_flip is False and fm.dataset.flip is True
    validate(fm)
    validate(sv)


@pytest.mark.parametrize("name, model, lr, lam, rho, epochs", [
    ("table5_svhn", "wrn28_10", 0.01, 5e-4, 0.01, 160),
    ("table5_svhn", "shakeshake26_2x96d", 0.01, 5e-4, 0.01, 160),
    ("table5_fashion_mnist", "wrn28_10", 0.1, 5e-4, 0.05, 200),
    ("table5_fashion_mnist", "shakeshake26_2x96d", 0.1, 5e-4, 0.02, 200),
])
def test_table5_recipes_use_table7_hyperparameters(name, model, lr, lam, rho, epochs):
    cfg = make(f"experiment={name}", f"model={model}", "optim=sam")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.rho) == (lr, lam, rho)
    assert (cfg.epochs, cfg.batch_size, cfg.m, cfg.amp) == (epochs, 256, 32, "off")
    assert cfg.dataset.name == name.removeprefix("table5_")
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        sweep = compose(config_name="train", overrides=[f"experiment={name}"],
                        return_hydra_config=True).hydra.sweeper.params
    assert sweep.seed == "0,1,2,3,4" and sweep.optim == "sgd,sam"
    assert sweep.augment == ("basic,autoaugment" if "svhn" in name else "basic,cutout")


@pytest.mark.parametrize("overrides, words", [
    (["dataset=fashion_mnist", "augment=autoaugment"], "AutoAugment needs RGB"),
    (["dataset=fashion_mnist", "+dataset.fallback_synthetic=true"], "fallback_synthetic"),
    (["dataset=svhn", "dataset.aa_policy=mnist"], "dataset.aa_policy='mnist'"),
    (["dataset=svhn", "dataset.flip=maybe"], "dataset.flip='maybe'"),
])
def test_validate_refuses(overrides, words):
    with pytest.raises(UserError, match=words):
        validate(make(*overrides))


# --------------------------------------------------------------------------- report


def _result(root: Path, name: str, dataset: str, model: str, augment: str, optim: str,
            error: float, epochs: int = 160) -> None:
    summary = {"dataset": dataset, "model": model, "augment": augment, "optim": optim,
               "rho": 0.01 if optim == "sam" else None, "m": 32, "epochs": epochs, "seed": 0,
               "batch_size": 256, "lr": 0.01, "lam": 5e-4, "eval_split": "test",
               "fidelity": "official", "label_noise": 0.0}
    write_json(root / name / "results.json", {
        "schema_version": 1, "status": "complete", "error": None, "summary": summary,
        "overrides": [], "config": {}, "history": [], "precision": "fp32",
        "final": {"epoch": epochs, "test_error": error}})


def test_report_shows_table5_beside_matching_rows(tmp_path, capsys):
    rows = [("svhn", "wrn28_10", "autoaugment"), ("fashion_mnist", "shakeshake26_2x96d", "cutout"),
            ("svhn_train", "wrn28_10", "basic"), ("fashion_mnist", "wrn28_10", "autoaugment")]
    for i, (dataset, model, augment) in enumerate(rows):
        for optim, error in (("sgd", 1.2), ("sam", 1.0)):
            _result(tmp_path / "sweep", f"{i}_{optim}", dataset, model, augment, optim, error)
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        paper = {(r["dataset"], r["augment"]): (r["paper_sgd"], r["paper_sam"])
                 for r in csv.DictReader(f)}
    assert paper[("svhn", "autoaugment")] == ("1.14", "0.99")      # Table 5, SVHN WRN AA
    assert paper[("fashion_mnist", "cutout")] == ("3.76", "3.59")  # F-MNIST SS "AA" column
    assert paper[("svhn_train", "basic")] == ("", "")  # not the paper's training set
    assert paper[("fashion_mnist", "autoaugment")] == ("", "")
    key = ("svhn", "shakeshake26_2x96d", "basic", 7, "test", "pytorch", 0.0)
    assert paper_cells(key) == ("1.58±0.05", "1.44±0.02")  # any epochs, either fidelity
    assert paper_cells(key[:4] + ("val",) + key[5:]) is None


# --------------------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("dataset, augment", [("svhn", "autoaugment"),
                                              ("fashion_mnist", "cutout")])
def test_one_epoch_trains_on_each_generated_dataset(tmp_path, dataset, augment):
    root = tmp_path / "data"
    write_svhn(root) if dataset == "svhn" else write_fashion(root)
    cfg = make(f"dataset={dataset}", f"data_dir={root}", "dataset.verify=false",
               "dataset.download=false", f"augment={augment}", "model=resnet20",
               "model.depth=8", "batch_size=4", "eval_batch_size=8", "epochs=1", "device=cpu")
    run(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "complete" and results["summary"]["dataset"] == dataset
    assert 0 <= results["final"]["test_error"] <= 100
    splits = splits_of(cfg)
    assert results["data_source"] == splits.source and splits.train_x.shape[1] == (
        3 if dataset == "svhn" else 1)


def test_runs_recorded_before_in_channels_resume():
    """A config recorded before model.in_channels existed compares equal to today's CIFAR
    config (results.KEYS_ADDED fills in 3), and differs from a one-channel one."""
    from sam.results import comparable_config

    new = OmegaConf.to_container(make("dataset=cifar10"))
    old = {**new, "model": {k: v for k, v in new["model"].items() if k != "in_channels"}}
    assert comparable_config(old) == comparable_config(new)
    one = {**new, "model": {**new["model"], "in_channels": 1}}
    assert comparable_config(old) != comparable_config(one)
