"""Images/s of the large-image DataLoader path (sam.data.image_loader) on a generated
ImageFolder: the loader alone (decode, random resized crop, flip, copy, normalize) for
each worker count, then one sam-train epoch through the trainer.

    python scripts/bench_images.py                          # CPU: 256 JPEGs, 64 px, resnet20
    python scripts/bench_images.py --device cuda --images 4096 --height 375 --width 500 \
        --size 224 --workers 0,4,8 --model resnet50 --batch 128 --out bench.json

Writes the numbers as JSON to --out (and prints them). The images are smooth random
colour fields saved as JPEG (quality 90) of --height x --width, 10 classes, in a
temporary folder removed at exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from sam.data.image_loader import ImageLoader
from sam.data.image_sets import IMAGENET_STATS, eval_transform, load_image_sets, train_transform
from sam.runtime import device_name, resolve_device
from sam.train import run


def write_folder(root: Path, n_train: int, n_val: int, height: int, width: int) -> None:
    """n_train / n_val JPEGs in root/{train,val}/c<k>/ (10 classes)."""
    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            coarse = rng.randint(0, 256, (max(height // 8, 1), max(width // 8, 1), 3),
                                 dtype=np.uint8)
            path = root / split / f"c{k % 10}" / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path,
                                                                                quality=90)


def loader_rate(root: Path, size: int, batch: int, workers: int, device: torch.device) -> float:
    """Images/s of one training epoch of the loader alone (after a warm-up epoch)."""
    sets = load_image_sets("imagefolder", str(root.parent), root=root.name, num_classes=10,
                           train=train_transform(size), evaluation=eval_transform(size, size))
    loader = ImageLoader(sets.train, batch, device, *IMAGENET_STATS, shuffle=True,
                         drop_last=True, num_workers=workers)
    list(loader)  # starts the workers
    t0 = time.perf_counter()
    seen = 0
    for _, y in loader:
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - t0)


def train_rate(root: Path, args: argparse.Namespace, workers: int, run_dir: Path) -> dict:
    """One sam-train epoch (SAM) on the folder: its images/s and precision."""
    overrides = ["dataset=imagefolder", f"data_dir={root.parent}", f"dataset.root={root.name}",
                 "dataset.num_classes=10", f"dataset.image_size={args.size}",
                 f"dataset.resize={args.size}", f"dataset.num_workers={workers}",
                 f"model={args.model}", f"batch_size={args.batch}",
                 f"eval_batch_size={args.batch}", "epochs=1", f"device={args.device}",
                 "progress=false"]
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    OmegaConf.resolve(cfg)
    run(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    return {"images_per_sec": results["history"][0]["images_per_sec"],
            "precision": results["precision"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256,
                   help="training images, >= 10 (val: a quarter, >= 10)")
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--size", type=int, default=64, help="crop size (dataset.image_size)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="0,1", help="comma-separated worker counts")
    p.add_argument("--model", default="resnet20", help="a configs/model option")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-train", action="store_true", help="time the loader only")
    p.add_argument("--out", type=Path, default=None, help="write the numbers here (JSON)")
    args = p.parse_args(argv)
    if args.images < 10:
        p.error("--images: at least 10 (one per class)")
    device = resolve_device(args.device)
    workers = [int(w) for w in args.workers.split(",")]
    out: dict = {"device": device_name(device), "images": args.images,
                 "source": f"{args.height}x{args.width} JPEG", "size": args.size,
                 "batch": args.batch, "model": args.model, "loader": {}, "train": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        write_folder(root, args.images, max(args.images // 4, 10), args.height, args.width)
        for w in workers:
            out["loader"][f"workers={w}"] = round(loader_rate(root, args.size, args.batch, w,
                                                              device), 1)
            print(f"loader alone, workers={w}: {out['loader'][f'workers={w}']} images/s",
                  flush=True)
        if not args.no_train:
            for w in workers:
                r = train_rate(root, args, w, Path(tmp) / f"run{w}")
                out["train"][f"workers={w}"] = {**r, "images_per_sec":
                                                round(r["images_per_sec"], 1)}
                print(f"sam-train epoch (SAM, {args.model}, {r['precision']}), workers={w}: "
                      f"{r['images_per_sec']:.1f} images/s", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
