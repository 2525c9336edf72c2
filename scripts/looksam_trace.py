"""Per-step trace of LookSAM beside SGD and SAM: why does it train worse at alpha 0.7?

Trains ResNet-20 on the first N CIFAR-10 training images (crop + flip, batch 128, SGD
lr 0.1 Nesterov momentum 0.9, the official descent conventions: L2 5e-4 in the loss,
clip to norm 5), from the same initialization and batch order for every optimizer, and
prints per window of steps:

    loss        the clean training loss on the batch (mean over the window)
    |gv|/|gs|   at LookSAM's SAM steps: the norm of the SAM gradient's component
                orthogonal to the clean gradient, over the SAM gradient's norm
    alpha_eff   what a reuse step adds instead, over the clean gradient's norm: alpha
                (the rule rescales the kept g_v to alpha ||g||)
    cos(gv,g)   at reuse steps: the cosine of the kept (stale) g_v with the current g

    python scripts/looksam_trace.py --data-dir data --alpha 0.7 0.2 --steps 117
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch import Tensor

from sam.data.augment import random_crop_flip
from sam.data.datasets import load_dataset
from sam.models.resnet import CifarResNet
from sam.optim import SAM, Descent, LookSAM, sam_step


def _norm(tensors: list[Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])).item()


class TracedLookSAM(LookSAM):
    """LookSAM that records, per step, what the module docstring prints."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record: dict[str, float] = {}

    @torch.no_grad()
    def unperturb(self) -> None:
        moved = list(self._moved)
        super().unperturb()
        if moved:  # a SAM step: p.grad is g_s, the kept g_v is fresh
            g_s = [p.grad for p in moved]
            g_v = [self._kept(p)["looksam_g_v"] for p in moved]
            self.record["gv_over_gs"] = _norm(g_v) / _norm(g_s)

    @torch.no_grad()
    def reuse_(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        l2 = self.param_groups[0]["l2"]
        g = [p.grad + l2 * p for p in params]  # what reuse_ combines with g_v (L2 in it)
        g_v = [self._kept(p)["looksam_g_v"] for p in params]
        inner = sum((a * b).sum() for a, b in zip(g, g_v, strict=True))
        self.record["cos_gv_g"] = (inner / (_norm(g) * _norm(g_v))).item()
        super().reuse_()


def train(name: str, x: Tensor, y: Tensor, steps: int, alpha: float, k: int,
          seed: int, batch: int = 128) -> list[dict[str, float]]:
    """The per-step records of one optimizer ("sgd", "sam" or "looksam")."""
    torch.manual_seed(seed)
    model = CifarResNet(20, 10)
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, wd_mode="loss",
              max_grad_norm=5.0)
    if name == "sgd":
        opt = Descent(model.parameters(), torch.optim.SGD, **kw)
    elif name == "sam":
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    else:
        opt = TracedLookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=k, alpha=alpha,
                            **kw)
    order = torch.Generator().manual_seed(seed)
    records: list[dict[str, float]] = []
    while len(records) < steps:
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x) - batch + 1, batch):
            rows = perm[i:i + batch]
            loss = sam_step(model, opt, F.cross_entropy, random_crop_flip(x[rows], order),
                            y[rows])
            rec = getattr(opt, "record", {})
            records.append({"loss": loss.item(), **rec})
            rec.clear()
            if len(records) == steps:
                break
    return records


def summarize(records: list[dict[str, float]], window: int) -> list[dict[str, float]]:
    """Means over windows of ``window`` steps (keys present in a window only)."""
    out = []
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        row = {"step": start}
        for key in ("loss", "gv_over_gs", "cos_gv_g"):
            values = [r[key] for r in chunk if key in r]
            if values:
                row[key] = statistics.fmean(values)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--no-verify", action="store_true", help="skip the md5 check")
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=117)
    ap.add_argument("--window", type=int, default=13)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.7])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write every step's record here")
    args = ap.parse_args()
    splits = load_dataset("cifar10", args.data_dir, verify=not args.no_verify,
                          subset=args.subset)
    mean = torch.tensor(splits.mean).view(1, 3, 1, 1)
    std = torch.tensor(splits.std).view(1, 3, 1, 1)
    x = (splits.train_x.float() / 255 - mean) / std
    runs = {"sgd": ("sgd", 0.0), "sam": ("sam", 0.0)}
    runs |= {f"looksam alpha={a}": ("looksam", a) for a in args.alpha}
    traces = {label: train(name, x, splits.train_y, args.steps, a, args.k, args.seed,
                           args.batch) for label, (name, a) in runs.items()}
    print(f"{'run':<20} {'steps':>9} {'loss':>6} {'|gv|/|gs|':>9} {'alpha_eff':>9} "
          f"{'cos(gv,g)':>9}")
    for label, records in traces.items():
        alpha = runs[label][1] if label.startswith("looksam") else None
        for row in summarize(records, args.window):
            cells = [f"{row[key]:.3f}" if key in row else "-"
                     for key in ("gv_over_gs", "cos_gv_g")]
            end = min(row["step"] + args.window, args.steps) - 1
            print(f"{label:<20} {row['step']:>4}-{end:<4} {row['loss']:>6.3f} "
                  f"{cells[0]:>9} {alpha if alpha is not None else '-':>9} {cells[1]:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "traces": traces}, f, indent=1)


if __name__ == "__main__":
    main()
