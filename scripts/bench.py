"""Step-time benchmark, all in ONE process so the ratios compare like with like.

Measures, for one model and batch size:
  sgd        our SGD step: device-resident data, batched augmentation, sam_step, at
             sam-train's precision (--amp, default auto: bf16 where the device computes
             it natively, else fp32)
  sam        our SAM step (same pipeline); both with sam-train's descent conventions
             (--fidelity official, the default: L2 in the loss, clip to norm 5; pytorch:
             weight decay in the base step, no clip)
  sam_loop   the SAM step as sam-train's loop runs it: outputs kept, loss and error
             summed on the device, and the NaN/inf check after every step
  fwdbwd     one bare forward+backward on a fixed batch (SAM's floor is two of them)
  {sgd,sam}_mM_{loop,vmap}   with --m M: shards of M examples (the paper recipes'
             m=32), one by one or batched (SGD: one pass with per-shard BatchNorm
             statistics; SAM: torch.func.vmap)
  reference  BASELINE ONLY: the usual PyTorch pipeline -- torchvision DataLoader with
             per-sample PIL transforms, fp32 (on CUDA with PyTorch's default TF32
             convolutions), and the per-parameter SAM loop of the popular
             davda54-style wrapper (kept here, not in the library)
and prints a table plus JSON with SAM/SGD, SAM overhead outside forward/backward,
ours/reference, and the CIFAR-10 epoch time each rate gives (50,000 training images;
training steps only, no evaluation) with the projected hours for 200 epochs of SAM.

    python scripts/bench.py --model resnet20 --batch 128 --steps 20      # CPU
    python scripts/bench.py --model wrn28_10 --batch 256 --json out.json  # CUDA
    python scripts/bench.py --summarize a.json b.json   # README rows from saved JSONs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam.data import DeviceLoader  # noqa: E402
from sam.models import build_model  # noqa: E402
from sam.optim import SAM, Descent, sam_step  # noqa: E402
from sam.results import write_json  # noqa: E402
from sam.runtime import amp_settings, device_name, precision_name  # noqa: E402
from sam.train import EpochMeter  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# our optimizers' descent conventions per sam-train fidelity (configs/fidelity)
FIDELITY = {"official": dict(wd_mode="loss", max_grad_norm=5.0),
            "pytorch": dict(wd_mode="base", max_grad_norm=None)}
Step = Callable[[], None]  # one training step of a pipeline, timed by the caller
CIFAR_TRAIN_IMAGES = 50_000  # one CIFAR-10 training epoch
PAPER_EPOCHS = 200  # the SAM paper's WRN-28-10 schedule ("sam_200_epochs_h")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(step: Step, calls: int, device: torch.device) -> float:
    """Wall seconds per call of step(), synchronised at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    sync(device)
    return (time.perf_counter() - t0) / calls


def median_times(steps: dict[str, Step], args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
    """Warm each step up, then time them interleaved over rounds; median per step, so
    a slow spell of the machine hits all pipelines alike."""
    for step in steps.values():
        seconds_per_call(step, args.warmup, device)
    rounds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rounds[name].append(seconds_per_call(step, args.steps, device))
    return {name: statistics.median(t) for name, t in rounds.items()}


def endless(loader: Iterable) -> Iterator:
    """The loader's batches, epoch after epoch, forever."""
    while True:
        yield from loader


def make_model(name: str, device: torch.device, channels_last: bool) -> nn.Module:
    """The model ``name`` (seed 0, 10 classes) on ``device`` in train mode."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def ours(args: argparse.Namespace, device: torch.device, x_all: torch.Tensor,
         y_all: torch.Tensor, optim: str, loop: bool = False, m: int | None = None,
         shard_impl: str = "auto") -> Step:
    """One step of our pipeline (loader + sam_step) with SGD or SAM; with ``loop``, plus
    the training loop's per-step bookkeeping (sam.train.EpochMeter, checking every step);
    ``m``: shards of m examples (own BatchNorm statistics; SAM: own eps), run by
    ``shard_impl``."""
    model = make_model(args.model, device, channels_last=True)
    net = torch.compile(model) if args.compile else model
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True,
              **FIDELITY[args.fidelity])
    if optim == "sam":
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    else:
        opt = Descent(model.parameters(), torch.optim.SGD, **kw)
    loader = DeviceLoader(x_all, y_all, args.batch, device, MEAN, STD, augment="basic")
    amp = args.autocast
    batches = endless(loader)
    meter = EpochMeter(device, check_every=1) if loop else None

    def step() -> None:
        x, y = next(batches)
        x = x.contiguous(memory_format=torch.channels_last)
        if meter is None:
            sam_step(net, opt, F.cross_entropy, x, y, m=m, amp_dtype=amp, shard_impl=shard_impl)
            return
        loss, out = sam_step(net, opt, F.cross_entropy, x, y, m=m, amp_dtype=amp,
                             return_outputs=True, shard_impl=shard_impl)
        meter.update(loss, out, y)

    return step


def bare_fwdbwd(args: argparse.Namespace, device: torch.device, x_all: torch.Tensor,
                y_all: torch.Tensor) -> Step:
    """One bare forward+backward on a fixed, ready batch (same precision as ours)."""
    amp = args.autocast
    model = make_model(args.model, device, channels_last=True)
    net = torch.compile(model) if args.compile else model
    x = ((x_all[: args.batch].float() / 255 - torch.tensor(MEAN).view(3, 1, 1))
         / torch.tensor(STD).view(3, 1, 1)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = y_all[: args.batch].to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


# ----------------------------------------------------------------- BASELINE ONLY
class _ReferenceSAM(torch.optim.Optimizer):
    """The popular davda54-style SAM: a Python loop over parameters, eps stored per
    parameter and subtracted back (w - eps) instead of restoring a saved copy."""

    def __init__(self, params, base, rho=0.05, **kw):
        super().__init__(params, dict(rho=rho, **kw))
        self.base_optimizer = base(self.param_groups, **kw)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        norm = torch.norm(torch.stack([p.grad.norm(2) for g in self.param_groups
                                       for p in g["params"] if p.grad is not None]), 2)
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        self.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(self.state[p]["e_w"])
        self.base_optimizer.step()
        self.zero_grad()


class _PerSampleCIFAR(torch.utils.data.Dataset):
    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor):
        self.images = x_uint8.permute(0, 2, 3, 1).numpy()
        self.labels = y.tolist()
        self.transform = transforms.Compose([
            transforms.ToPILImage(), transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference(args: argparse.Namespace, device: torch.device, x_all: torch.Tensor,
              y_all: torch.Tensor) -> Step:
    """One SAM step of the usual pipeline (fp32, DataLoader, per-parameter loop)."""
    model = make_model(args.model, device, channels_last=False)
    opt = _ReferenceSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9,
                        nesterov=True, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        _PerSampleCIFAR(x_all, y_all), batch_size=args.batch, shuffle=True, drop_last=True,
        num_workers=args.workers, pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0)
    batches = endless(loader)

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        F.cross_entropy(model(x), y).backward()
        opt.first_step()
        F.cross_entropy(model(x), y).backward()
        opt.second_step()

    return step
# ------------------------------------------------------------- end of BASELINE


def epoch_seconds(images_per_s: dict[str, float]) -> dict[str, float]:
    """Seconds per CIFAR-10 training epoch (50,000 images) at each pipeline's rate."""
    return {k: CIFAR_TRAIN_IMAGES / v for k, v in images_per_s.items()}


def results(args: argparse.Namespace, name: str, t: dict[str, float]) -> dict:
    """The JSON record of one benchmark from the median step times ``t``."""
    images_per_s = {k: args.batch / v for k, v in t.items() if k != "fwdbwd"}
    epoch_s = epoch_seconds(images_per_s)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": name,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "model": args.model, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
        "warmup": args.warmup, "images": args.images, "workers": args.workers,
        "compile": args.compile, "m": args.m, "amp": args.amp,
        "precision": precision_name(args.autocast),
        "fidelity": args.fidelity,
        "step_s": t,
        "images_per_s": images_per_s,
        "sam_over_sgd": t["sam"] / t["sgd"],
        "sam_loop_over_sam": t["sam_loop"] / t["sam"] if "sam_loop" in t else None,
        "sam_outside_fwdbwd": (t["sam"] - 2 * t["fwdbwd"]) / t["sam"],
        "reference_over_ours_sam": t["reference"] / t["sam"] if "reference" in t else None,
        "epoch_s": epoch_s,
        "sam_200_epochs_h": PAPER_EPOCHS * epoch_s["sam"] / 3600,
    }


def print_table(args: argparse.Namespace, out: dict) -> None:
    """The human-readable table of ``results``."""
    t, epoch_s = out["step_s"], out["epoch_s"]
    print(f"{out['device']}  torch {torch.__version__}  model {args.model}  batch {args.batch}"
          f"  precision {out['precision']}{'  compiled' if args.compile else ''}")
    print(f"{'pipeline':<12}{'step ms':>10}{'images/s':>12}{'epoch s':>10}"
          f"   (median of {args.rounds} rounds; epoch = {CIFAR_TRAIN_IMAGES} images)")
    for k, v in t.items():
        epoch = f"{epoch_s[k]:>10.1f}" if k in epoch_s else f"{'-':>10}"
        print(f"{k:<12}{1000 * v:>10.1f}{args.batch / v:>12.0f}{epoch}")
    print(f"SAM/SGD step time          {out['sam_over_sgd']:.3f}  (floor 2.0)")
    if out["sam_loop_over_sam"] is not None:
        print(f"training loop / SAM step   {out['sam_loop_over_sam']:.3f}  (bookkeeping, "
              "NaN check every step)")
    print(f"SAM time outside 2x fwd/bwd {100 * out['sam_outside_fwdbwd']:.1f}%")
    if out["reference_over_ours_sam"] is not None:
        print(f"reference/ours (SAM step)  {out['reference_over_ours_sam']:.2f}x")
    print(f"SAM, {PAPER_EPOCHS} epochs (projected)  "
          f"{out['sam_200_epochs_h']:.2f} h  (training steps only)")


def _shard_steps(out: dict) -> tuple[str, str, str]:
    """(SAM key, SGD key, m label) of the row: the faster shard implementation of each
    when the run timed shards of m (--m), else the plain steps."""
    m = out.get("m")
    t = out["step_s"]
    if not m or f"sam_m{m}_loop" not in t:
        return "sam", "sgd", "B"
    sam = min((k for k in t if k.startswith(f"sam_m{m}_")), key=t.__getitem__)
    sgd = min((k for k in t if k.startswith(f"sgd_m{m}_")), key=t.__getitem__)
    return sam, sgd, f"{m} ({sam.rsplit('_', 1)[1]})"


def summary_row(out: dict) -> str:
    """One README table row (markdown) of a saved benchmark JSON; the epoch time is
    derived from images/s, so JSONs written before it was recorded work too. A run with
    --m reports its shard steps (m = 32 for the paper recipes); "B" is plain SAM/SGD."""
    sam, sgd, m = _shard_steps(out)
    ips, t = out["images_per_s"], out["step_s"]
    epoch = epoch_seconds(ips)[sam]
    ref = out.get("reference_over_ours_sam") if sam == "sam" else None
    cells = [out["date"][:10], out["device"], f"{out['model']}, {out['batch']}", m,
             out.get("precision", "-"), "yes" if out.get("compile") else "no",
             f"{ips[sam]:.0f}", f"{epoch:.1f} s",
             f"{PAPER_EPOCHS * epoch / 3600:.2f} h", f"{t[sam] / t[sgd]:.3f}",
             f"{ref:.2f}x" if ref else "-"]
    return "| " + " | ".join(cells) + " |"


def summarize(paths: list[Path]) -> str:
    """A markdown table of the bench.py JSONs among ``paths`` (others are skipped)."""
    header = ["date", "device", "model, batch", "m", "precision", "compile", "ours SAM img/s",
              "epoch (SAM)", f"{PAPER_EPOCHS} epochs", "SAM/SGD step", "ours vs reference"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in paths:
        try:
            out = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"skipping {path}: {err}", file=sys.stderr)
            continue
        if isinstance(out, dict) and "step_s" in out and "images_per_s" in out:
            rows.append(summary_row(out))
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median taken")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--images", type=int, default=None,
                   help="synthetic set size (default: enough batches that the reference "
                        "DataLoader never starts a new epoch inside the timed steps)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="our pipelines' precision, as sam-train's amp (the reference: fp32)")
    p.add_argument("--fidelity", choices=tuple(FIDELITY), default="official",
                   help="our steps' descent conventions, as sam-train's fidelity group")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--m", type=int, default=None,
                   help="also time SGD and SAM (loop, vmap) with shards of m examples")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--summarize", type=Path, nargs="+", metavar="JSON",
                   help="only print a markdown table of these saved JSONs")
    return p.parse_args()


def main() -> None:
    """Run the benchmark (or --summarize saved ones) and print/write the results."""
    args = parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.autocast, _ = amp_settings(args.amp, device)  # our pipelines' dtype (None: fp32)
    args.images = args.images or args.batch * (args.warmup + args.rounds * args.steps + 2)
    n = args.images
    g = torch.Generator().manual_seed(0)
    x_all = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y_all = torch.randint(0, 10, (n,), generator=g)

    steps = {"sgd": ours(args, device, x_all, y_all, "sgd"),
             "sam": ours(args, device, x_all, y_all, "sam"),
             "sam_loop": ours(args, device, x_all, y_all, "sam", loop=True),
             "fwdbwd": bare_fwdbwd(args, device, x_all, y_all)}
    if args.m:  # the paper recipes' shards (m=32: 8 GPUs x 32), each implementation
        for optim in ("sgd", "sam"):
            for impl in ("loop", "vmap"):
                steps[f"{optim}_m{args.m}_{impl}"] = ours(args, device, x_all, y_all, optim,
                                                          m=args.m, shard_impl=impl)
    if not args.no_reference:
        steps["reference"] = reference(args, device, x_all, y_all)
    t = median_times(steps, args, device)
    name = device_name(device)
    out = results(args, name, t)
    print_table(args, out)
    print(json.dumps(out))
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
