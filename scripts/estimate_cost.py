"""GPU-hour estimates of the experiment recipes, from counted FLOPs.

FLOPs per training image (forward + backward, one pass) are counted with
torch.utils.flop_counter on CPU; SAM does two passes. Hours assume a sustained
throughput (default 175 TFLOP/s: the H100 target of running WRN-28-10 SAM for 200
epochs in one hour); they are estimates, not measurements.

    python scripts/estimate_cost.py [--tflops 175]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam.models import WideResNet, build_model  # noqa: E402

TRAIN_IMAGES = 50_000
# recipe -> (model, epochs, runs per optimizer, extra SGD runs at 2x epochs)
RECIPES = {
    "table1_wrn28_10": ("wrn28_10", 200, 30, 30),
    "table1_wrn28_10_1800": ("wrn28_10", 1800, 30, 30),
    "table1_shakeshake": ("shakeshake26_2x96d", 1800, 30, 30),
    "table1_pyramidnet": ("pyramidnet272", 1800, 30, 30),
    "table1_pyramidnet_shakedrop": ("pyramidnet272_shakedrop", 1800, 30, 30),
}
# Table 5 recipe -> (models, epochs, training images, input C x H x W); per model 10 SGD +
# 10 SAM runs (2 augmentations x 5 seeds) and 10 SGD runs at 2x epochs
TABLE5 = {
    "table5_svhn": (("wrn28_10", "shakeshake26_2x96d"), 160, 73_257 + 531_131, (3, 32, 32)),
    "table5_fashion_mnist": (("wrn28_10", "shakeshake26_2x96d"), 200, 60_000, (1, 28, 28)),
}


# fig3_spectrum: a WRN-40-10 without BatchNorm, one SGD and one SAM run of 300 epochs, each
# measured after 3 epochs with iters + trace_samples + slq_runs * slq_iters = 40 + 10 + 80
# Hessian-vector products on 2,000 images (configs/experiment/fig3_spectrum.yaml)
FIG3 = {"epochs": 300, "measurements": 3, "hvps": 40 + 10 + 80, "images": 2000}


def hvp_flops_per_image(model: torch.nn.Module) -> float:
    """Counted FLOPs of one Hessian-vector product (double backward) per CIFAR image."""
    params = list(model.parameters())
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    v = [torch.randn_like(p) for p in params]
    with FlopCounterMode(display=False) as counter:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params)
    return counter.get_total_flops() / 2


def fig3_hours(rate: float) -> tuple[float, float, float, float]:
    """(training GFLOP/img, SGD h/run, SAM h/run, total h) of fig3_spectrum at ``rate``
    FLOP/s, the measurements included."""
    model = WideResNet(40, 10, 10, style="official", norm="none").train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    train = counter.get_total_flops() / 2
    measure = FIG3["measurements"] * FIG3["hvps"] * FIG3["images"] * hvp_flops_per_image(model)
    sgd = (FIG3["epochs"] * TRAIN_IMAGES * train + measure) / rate / 3600
    sam = (FIG3["epochs"] * TRAIN_IMAGES * 2 * train + measure) / rate / 3600
    return train / 1e9, sgd, sam, sgd + sam


def train_flops_per_image(name: str, shape: tuple[int, int, int] = (3, 32, 32)) -> float:
    """Counted FLOPs of one forward + backward of an image of ``shape`` (CIFAR's by
    default; batch 2, halved)."""
    model = build_model(name, num_classes=10, in_channels=shape[0]).train()
    x, y = torch.randn(2, *shape), torch.randint(0, 10, (2,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tflops", type=float, default=175.0, help="sustained TFLOP/s assumed")
    args = p.parse_args()
    rate = args.tflops * 1e12
    flops = {m: train_flops_per_image(m)
             for m in {"resnet20", "resnet32", *(r[0] for r in RECIPES.values())}}
    print(f"assumed sustained rate: {args.tflops:.0f} TFLOP/s (estimates, not measurements)")
    print(f"{'recipe':<30}{'GFLOP/img':>10}{'SGD h/run':>11}{'SAM h/run':>11}{'total GPU-h':>13}")
    for recipe, (model, epochs, runs, sgd2x) in RECIPES.items():
        sgd = epochs * TRAIN_IMAGES * flops[model] / rate / 3600
        total = runs * sgd + runs * 2 * sgd + sgd2x * 2 * sgd
        print(f"{recipe:<30}{flops[model] / 1e9:>10.1f}{sgd:>11.2f}{2 * sgd:>11.2f}{total:>13.0f}")
    # m-sharpness: 30 SAM runs of ResNet-20, 100 epochs; rho_search: 6 SAM runs of
    # WRN-28-10 on 45,000 images for 200 epochs
    ms = 30 * 100 * TRAIN_IMAGES * 2 * flops["resnet20"] / rate / 3600
    rs = 6 * 200 * 45_000 * 2 * flops["wrn28_10"] / rate / 3600
    print(f"{'msharpness':<30}{flops['resnet20'] / 1e9:>10.2f}{'':>11}{ms / 30:>11.3f}{ms:>13.1f}")
    print(f"{'rho_search':<30}{flops['wrn28_10'] / 1e9:>10.1f}{'':>11}{rs / 6:>11.2f}{rs:>13.0f}")
    # table4_label_noise: 4 noise levels x 3 seeds x (SGD + SAM at twice the cost),
    # ResNet-32, 200 epochs
    t4 = 4 * 3 * 3 * 200 * TRAIN_IMAGES * flops["resnet32"] / rate / 3600
    print(f"{'table4_label_noise':<30}{flops['resnet32'] / 1e9:>10.2f}{'':>11}"
          f"{t4 / 36 * 2:>11.3f}{t4:>13.1f}")
    print("msharpness and table4_label_noise are lower bounds: nets this small run far "
          "below the assumed rate.")
    gflops, sgd, sam, total = fig3_hours(rate)
    print(f"{'fig3_spectrum':<30}{gflops:>10.1f}{sgd:>11.2f}{sam:>11.2f}{total:>13.1f}")
    for recipe, (models, epochs, images, shape) in TABLE5.items():
        for model in models:
            f = train_flops_per_image(model, shape)
            sgd = epochs * images * f / rate / 3600
            total = 10 * sgd + 10 * 2 * sgd + 10 * 2 * sgd
            print(f"{recipe + ' ' + model:<30}{f / 1e9:>10.1f}{sgd:>11.2f}{2 * sgd:>11.2f}"
                  f"{total:>13.0f}")


if __name__ == "__main__":
    main()
