"""Time lambda_max of the training-loss Hessian (Lanczos over Hessian-vector products).

The loss is the mean cross-entropy over ``--images`` random CIFAR-shaped images (3x32x32, 10
classes) split into batches of ``--batch-size``; the model is in eval mode. Runs on the CPU
and, when available, on CUDA, and prints the device names and the torch version.

    python scripts/bench_sharpness.py                      # wrn16_8, 1000 images, CPU + CUDA
    python scripts/bench_sharpness.py --images 16 --batch-size 8 --iters 5 --model small_cnn

``--model`` is a name for ``sam.models.build_model``; when that import or build fails, or for
``--model small_cnn``, a small CNN defined here is used and the output says so.
"""

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = "small_cnn"


class SmallCNN(nn.Module):
    """Fallback model: conv(32)-BN-ReLU-pool, conv(64)-BN-ReLU-pool, linear (about 20k params)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="wrn16_8", help="sam.models name, or small_cnn")
    parser.add_argument("--images", type=int, default=1000, help="number of random images")
    parser.add_argument("--batch-size", type=int, default=250, help="images per HVP batch")
    parser.add_argument("--iters", type=int, default=20, help="Lanczos iterations")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when unavailable"
    )
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.iters < 1:
        parser.error("--images, --batch-size and --iters must be positive")
    return args


def build(name: str, num_classes: int) -> tuple[nn.Module, str]:
    """The model and a line saying where it came from (with the reason for any fallback)."""
    if name == FALLBACK:
        return SmallCNN(num_classes), f"model: {FALLBACK} (defined in this script)"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from sam.models import build_model

        return build_model(name, num_classes), f"model: {name} (sam.models.build_model)"
    except Exception as exc:  # any failure falls back to SmallCNN, and is reported
        reason = f"{type(exc).__name__}: {exc}"
        return SmallCNN(num_classes), f"model: {FALLBACK} FALLBACK, {name!r} failed ({reason})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def bench(model: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    from sam.runtime import device_name
    from sam.sharpness import hvp_fn, lanczos, num_params

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.images, 3, 32, 32, generator=gen)
    y = torch.randint(0, args.num_classes, (args.images,), generator=gen)
    batches = [
        (xb.to(device), yb.to(device))
        for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size), strict=True)
    ]
    model = model.to(device).eval()
    dim = num_params(model)
    hvp = hvp_fn(model, F.cross_entropy, batches)
    _, warm = timed(lambda: hvp(torch.ones(dim, device=device)), device)
    top, total = timed(
        lambda: lanczos(hvp, dim, k=1, iters=args.iters, seed=args.seed, device=device), device
    )
    iters = min(args.iters, dim)
    print(f"[{device.type}] {device_name(device)}")
    print(f"  params {dim:,}; {args.images} images in {len(batches)} batches")
    print(f"  warm-up HVP {warm:.2f} s")
    print(
        f"  lambda_max = {float(top[0]):.6g} in {total:.2f} s "
        f"({iters} Lanczos iterations, {total / iters:.3f} s per HVP)"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    devices = [torch.device(d.strip()) for d in args.devices.split(",") if d.strip()]
    for device in devices:
        if device.type == "cuda" and not torch.cuda.is_available():
            print("[cuda] not available, skipped")
            continue
        torch.manual_seed(args.seed)
        model, origin = build(args.model, args.num_classes)
        print(origin)
        bench(model, args, device)


if __name__ == "__main__":
    main()
