"""The large-image DataLoader path (sam.data.image_sets, sam.data.image_loader): each dataset
read from tiny files the test writes in that dataset's own on-disk layout (as torchvision's
class reads it), batches normalized as by hand, shuffles replayed from (seed, epoch), DDP
rows, resume, refusals, and one sam-train epoch through the trainer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from sam.data import (
    IMAGE_SETS,
    DataMissing,
    ImageLoader,
    load_image_sets,
)
from sam.data.image_sets import eval_transform, train_transform
from sam.errors import UserError

SIZE = 12  # pixels of the written images


def color(label: int) -> tuple[int, int, int]:
    """The solid colour of every image of class ``label`` (JPEG keeps it within a few)."""
    return 30 + 50 * label, 220 - 60 * label, 90 + 70 * (label % 2)


def write_image(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE + 4, SIZE), color(label)).save(path, quality=95)


# ---------------------------------------------------------------- the datasets' own layouts
# Each writer returns (num_classes, train labels, eval labels) of the files it wrote.


def write_flowers(root: Path) -> tuple[int, list[int], list[int]]:
    base = root / "flowers-102"
    labels = [1, 2, 3, 1, 2, 3, 1, 2]  # 1-based, image ids 1..8
    for i, lab in enumerate(labels, 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", lab - 1)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 3]]),
                                          "valid": np.array([[4, 5]]),
                                          "tstid": np.array([[6, 7, 8]])})
    return 102, [0, 1, 2, 0, 1], [2, 0, 1]  # train+val, test


def write_cars(root: Path) -> tuple[int, list[int], list[int]]:
    base = root / "stanford_cars"

    def annotations(folder: str, classes: list[int]) -> np.ndarray:
        rows = np.zeros((1, len(classes)), dtype=[("bbox_x1", "O"), ("class", "O"),
                                                   ("fname", "O")])
        for k, cls in enumerate(classes):
            name = f"{k + 1:05d}.jpg"
            rows[0, k] = (np.array([[3]]), np.array([[cls]], dtype=np.uint8), name)
            write_image(base / folder / name, cls - 1)
        return rows

    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Car {k}" for k in range(196)]
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat",
                     {"annotations": annotations("cars_train", [1, 3, 2, 3])})
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat",
                     {"annotations": annotations("cars_test", [2, 1])})
    return 196, [0, 2, 1, 2], [1, 0]


def write_aircraft(root: Path) -> tuple[int, list[int], list[int]]:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = [f"Boeing 7{k:02d}-700" for k in range(100)]  # names with spaces
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(v + "\n" for v in variants))
    splits = {"trainval": [("0034309", 0), ("0034958", 2), ("0037511", 1)],
              "test": [("1001", 1), ("1002", 2)]}
    for split, rows in splits.items():
        lines = [f"{image} {variants[lab]}\n" for image, lab in rows]
        (data / f"images_variant_{split}.txt").write_text("".join(lines))
        for image, lab in rows:
            write_image(data / "images" / f"{image}.jpg", lab)
    return 100, [0, 2, 1], [1, 2]


def write_food(root: Path) -> tuple[int, list[int], list[int]]:
    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "beignets"]  # sorted: labels 0, 1, 2
    split_files = {"train": {"beignets": ["12", "13"], "apple_pie": ["10"],
                             "baby_back_ribs": ["11"]},
                   "test": {"apple_pie": ["20"], "baby_back_ribs": ["21"], "beignets": ["22"]}}
    (base / "meta").mkdir(parents=True)
    for split, items in split_files.items():
        meta = {c: [f"{c}/{i}" for i in ids] for c, ids in items.items()}
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
        for c, ids in items.items():
            for i in ids:
                write_image(base / "images" / c / f"{i}.jpg", classes.index(c))
    return 3, [2, 2, 0, 1], [0, 1, 2]


def write_pets(root: Path) -> tuple[int, list[int], list[int]]:
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    rows = {"trainval": [("Abyssinian_1", 1, 1), ("american_bulldog_2", 2, 2),
                         ("Bengal_3", 3, 1), ("Abyssinian_4", 1, 1)],
            "test": [("Bengal_9", 3, 1), ("american_bulldog_8", 2, 2)]}
    for split, items in rows.items():
        text = "".join(f"{name} {lab} {species} 1\n" for name, lab, species in items)
        (base / "annotations" / f"{split}.txt").write_text(text)
        for name, lab, _ in items:
            write_image(base / "images" / f"{name}.jpg", lab - 1)
    return 3, [0, 1, 2, 0], [2, 1]


def write_folders(root: Path, ext: str = "jpg") -> tuple[int, list[int], list[int]]:
    wnids = ["n01440764", "n01443537", "n01484850"]
    counts = {"train": [2, 1, 2], "val": [1, 1, 1]}
    for split, per_class in counts.items():
        for lab, (wnid, n) in enumerate(zip(wnids, per_class, strict=True)):
            for k in range(n):
                write_image(root / split / wnid / f"{split}_{k}.{ext}", lab)
    return 3, [0, 0, 1, 2, 2], [0, 1, 2]


def write_imagenet(root: Path) -> tuple[int, list[int], list[int]]:
    out = write_folders(root / "imagenet", "JPEG")
    names = {"n01440764": ("tench",), "n01443537": ("goldfish",), "n01484850": ("shark",)}
    torch.save((names, ["n01440764", "n01443537", "n01484850"]), root / "imagenet" / "meta.bin")
    return out


WRITERS = {
    "flowers102": (write_flowers, "train+val", "test"),
    "stanford_cars": (write_cars, "train", "test"),
    "fgvc_aircraft": (write_aircraft, "trainval", "test"),
    "food101": (write_food, "train", "test"),
    "oxford_pets": (write_pets, "trainval", "test"),
    "imagefolder": (lambda root: write_folders(root / "imagefolder", "png"), "train", "val"),
    "imagenet": (write_imagenet, "train", "val"),
}


def open_sets(name: str, root: Path, num_classes: int, **kwargs):
    _, train_split, test_split = WRITERS[name]
    view = eval_transform(SIZE, SIZE)
    return load_image_sets(name, str(root), num_classes=num_classes, train=view,
                           evaluation=view, verify=False, train_split=train_split,
                           test_split=test_split, **kwargs)


def test_every_image_set_has_a_test_writer():
    assert set(WRITERS) == set(IMAGE_SETS)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_dataset_is_read_from_its_own_layout_with_the_right_labels(tmp_path, name):
    num_classes, train_labels, eval_labels = WRITERS[name][0](tmp_path)
    sets = open_sets(name, tmp_path, num_classes)
    assert (sets.name, sets.num_classes) == (name, num_classes)
    for ds, expected in ((sets.train, train_labels), (sets.eval, eval_labels)):
        items = [ds[i] for i in range(len(ds))]
        assert Counter(lab for _, lab in items) == Counter(expected)
        for x, lab in items:  # each file's colour says its class: the label belongs to it
            assert x.dtype == torch.uint8 and x.shape == (3, SIZE, SIZE)
            mean = x.double().mean(dim=(1, 2))
            assert (mean - torch.tensor(color(lab), dtype=torch.float64)).abs().max() < 4
    assert str(tmp_path) in sets.source and f"{len(train_labels)} train images" in sets.source


def test_imagenet_without_its_meta_reads_the_same_folders_as_an_imagefolder(tmp_path):
    num_classes, train_labels, _ = write_imagenet(tmp_path)
    with_meta = open_sets("imagenet", tmp_path, num_classes)
    (tmp_path / "imagenet" / "meta.bin").unlink()
    folders = open_sets("imagenet", tmp_path, num_classes)
    assert "torchvision ImageNet" in with_meta.source and "ImageFolder" in folders.source
    assert with_meta.train.base.classes[0] == ("tench",)  # the devkit's names
    assert [lab for _, lab in (folders.train[i] for i in range(5))] == train_labels
    assert [lab for _, lab in (with_meta.train[i] for i in range(5))] == train_labels


def test_subsets_are_spread_over_the_class_sorted_files(tmp_path):
    num_classes, _, _ = write_folders(tmp_path / "imagefolder")
    sets = open_sets("imagefolder", tmp_path, num_classes, subset=3, test_subset=2)
    assert sets.train.indices == [0, 1, 3] and sets.eval.indices == [0, 1]
    assert [sets.train[i][1] for i in range(3)] == [0, 0, 2]  # labels 0 0 1 2 2
    with pytest.raises(UserError, match="dataset.test_subset=4 is out of range: use 1..3"):
        open_sets("imagefolder", tmp_path, num_classes, test_subset=4)


# ---------------------------------------------------------------------------- the loader


@pytest.fixture
def folder_sets(tmp_path):
    """imagefolder of 5 train / 3 val random-pixel PNGs (lossless), 16x12."""
    rng = np.random.RandomState(0)
    pixels = {}
    for split, n in (("train", 5), ("val", 3)):
        for k in range(n):
            a = rng.randint(0, 256, (12, 16, 3), dtype=np.uint8)
            path = tmp_path / "imagefolder" / split / f"c{k % 2}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path)
            pixels[path] = a
    return tmp_path, pixels


def test_eval_batches_are_the_centre_crops_normalized_as_by_hand(folder_sets):
    root, pixels = folder_sets
    view = eval_transform(8, 12)
    sets = load_image_sets("imagefolder", str(root), num_classes=2, train=view,
                           evaluation=view)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    loader = ImageLoader(sets.eval, 2, "cpu", mean, std, shuffle=False, drop_last=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [2, 1] and len(loader) == 2
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    files = sorted(p for p in pixels if p.parent.parent.name == "val")  # ImageFolder order
    ref = torch.stack([torch.from_numpy(pixels[p]).double()[2:10, 4:12].permute(2, 0, 1)
                       for p in files])  # 12x16: shorter side already 12, centre 8x8
    ref = (ref / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
    torch.testing.assert_close(x.double(), ref, atol=1e-5, rtol=0)
    assert y.tolist() == [int(p.parent.name[1]) for p in files]


def train_loader(sets, **kwargs) -> ImageLoader:
    return ImageLoader(sets.train, 2, "cpu", (0.5,) * 3, (0.25,) * 3, shuffle=True,
                       drop_last=True, seed=3, **kwargs)


@pytest.fixture
def crop_sets(folder_sets):
    root, _ = folder_sets
    return load_image_sets("imagefolder", str(root), num_classes=2,
                           train=train_transform(8), evaluation=eval_transform(8, 12))


def epoch(loader: ImageLoader, e: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(e)
    return list(loader)


def same(a, b) -> bool:
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2)
               in zip(a, b, strict=True))


def test_shuffles_and_crops_replay_for_a_seed_and_epoch_and_change_with_the_epoch(crop_sets):
    loader = train_loader(crop_sets)
    first = epoch(loader, 0)
    assert len(first) == len(loader) == 2 and first[0][0].shape == (2, 3, 8, 8)  # 5 // 2
    assert same(first, epoch(loader, 0)) and same(first, epoch(train_loader(crop_sets), 0))
    assert not same(first, epoch(loader, 1))
    other_seed = ImageLoader(crop_sets.train, 2, "cpu", (0.5,) * 3, (0.25,) * 3,
                             shuffle=True, drop_last=True, seed=4)
    assert not same(first, epoch(other_seed, 0))


def test_worker_processes_yield_the_same_batches(crop_sets):
    with_workers = train_loader(crop_sets, num_workers=2)
    assert same(epoch(train_loader(crop_sets), 1), epoch(with_workers, 1))
    assert same(epoch(train_loader(crop_sets), 2), epoch(with_workers, 2))  # persistent


def test_a_resumed_epoch_continues_with_the_same_batches(crop_sets):
    loader = train_loader(crop_sets, cutout=True)
    full = epoch(loader, 5)
    loader.set_epoch(5)
    it = iter(loader)
    next(it)
    position = loader.position()
    resumed = train_loader(crop_sets, cutout=True)
    resumed.resume_at(position)
    assert same(full[1:], list(resumed))


def test_a_shard_yields_its_rows_of_every_batch(crop_sets):
    full = epoch(train_loader(crop_sets), 0)
    for rank in range(2):
        part = train_loader(crop_sets)
        part.set_shard(rank, 2)
        rows = [(x[rank : rank + 1], y[rank : rank + 1]) for x, y in full]
        assert same(rows, epoch(part, 0))


# ---------------------------------------------------------------------------- refusals


def test_absent_or_mismatched_data_is_one_line(tmp_path):
    with pytest.raises(DataMissing, match="flowers-102") as err:
        open_sets("flowers102", tmp_path, 102)
    assert "\n" not in str(err.value) and "dataset.download=true" in str(err.value)
    with pytest.raises(DataMissing, match="cannot be downloaded"):
        open_sets("stanford_cars", tmp_path, 196)
    write_folders(tmp_path / "imagefolder")
    with pytest.raises(UserError, match="set dataset.num_classes=3"):
        open_sets("imagefolder", tmp_path, 10)
    write_flowers(tmp_path)
    view = eval_transform(SIZE, SIZE)
    with pytest.raises(UserError, match="dataset.verify=false"):  # our .mat files' md5
        load_image_sets("flowers102", str(tmp_path), num_classes=102, train=view,
                        evaluation=view, verify=True, train_split="train")


@pytest.mark.parametrize("override, words", [
    ("+dataset.label_noise=0.2", "dataset.label_noise"),
    ("dataset.val_fraction=0.1", "dataset.val_fraction"),
    ("sharpness.every=1", "sharpness.every"),
    ("sharpness.epochs=[1]", "sharpness.epochs"),
    ("augment=autoaugment", "augment=autoaugment"),
    ("dataset.num_classes=null", "dataset.num_classes"),
    ("dataset.crop_scale=[0.5,2]", "dataset.crop_scale"),
    ("dataset.mean=[0.5]", "dataset.mean"),
    ("dataset.num_workers=-1", "dataset.num_workers"),
    ("dataset.interpolation=nearest", "dataset.interpolation"),
])
def test_what_the_image_path_cannot_do_is_refused_in_one_line(override, words):
    from helpers import compose_train

    from sam.train import validate

    cfg = compose_train("dataset=imagefolder", "dataset.num_classes=3", override)
    with pytest.raises(UserError, match=words.replace("[", r"\[")) as err:
        validate(cfg)  # sam-train's checks, before anything is read
    assert "\n" not in str(err.value)
    validate(compose_train("dataset=imagefolder", "dataset.num_classes=3"))  # fine


def test_in_memory_tools_refuse_an_image_dataset():
    from sam.data import load_dataset

    with pytest.raises(UserError, match="read from image files"):
        load_dataset("food101", "data")


# ---------------------------------------------------------------------------- sam-train


def test_sam_train_on_an_imagefolder_and_a_resume_ends_where_the_whole_run_did(tmp_path):
    from unittest import mock

    from helpers import compose_train

    from sam.train import run, runner

    rng = np.random.RandomState(1)
    for split, n in (("train", 16), ("val", 6)):
        for k in range(n):
            a = rng.randint(0, 256, (40, 44, 3), dtype=np.uint8)
            path = tmp_path / "data" / "imagefolder" / split / f"class{k % 3}" / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path)
    cfg = compose_train("dataset=imagefolder", f"data_dir={tmp_path / 'data'}",
                        "dataset.num_classes=3", "dataset.image_size=32", "dataset.resize=36",
                        "dataset.num_workers=0", "model=resnet20", "model.depth=8",
                        "batch_size=8", "eval_batch_size=4", "epochs=2", "device=cpu")
    run(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "complete" and results["summary"]["dataset"] == "imagefolder"
    assert "ImageFolder" in results["data_source"] and "16 train images" in results[
        "data_source"]
    assert results["summary"]["eval_split"] == "test"
    assert results["history"][0]["images_per_sec"] > 0

    real_run_epoch = runner.run_epoch

    def cut_at_second_epoch(cfg, setup, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_run_epoch(cfg, setup, epoch, **kw)

    with mock.patch.object(runner, "run_epoch", cut_at_second_epoch), \
            pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "part")
    run(cfg, tmp_path / "part")  # resumes after epoch 1: epoch 2's crops replayed
    resumed = json.loads((tmp_path / "part" / "results.json").read_text())
    assert resumed["final"] == results["final"]


def test_download_offline_is_one_line_and_leaves_no_folders(tmp_path):
    view = eval_transform(SIZE, SIZE)
    root = tmp_path / "fresh"  # SAM_OFFLINE=1 in the tests (conftest): no network touched
    with pytest.raises(DataMissing, match="SAM_OFFLINE") as err:
        load_image_sets("food101", str(root), num_classes=101, train=view, evaluation=view,
                        download=True)
    assert "\n" not in str(err.value) and not root.exists()


def test_the_images_benchmark_runs_and_reports_both_rates(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_images.py"
    spec = importlib.util.spec_from_file_location("bench_images", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--images", "12", "--height", "16", "--width", "20", "--size", "8",
                      "--batch", "4", "--workers", "0", "--model", "resnet20", "--device",
                      "cpu", "--out", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text()) == out
    assert out["loader"]["workers=0"] > 0 and out["train"]["workers=0"]["images_per_sec"] > 0
