"""Cost of m-sharpness per SAM step versus m: the per-shard loop vs torch.func.vmap.

All in one process, median of interleaved rounds; prints a table and JSON.

    python scripts/bench_msharpness.py --model resnet20 --batch 128 --m 1,4,16,64,128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam import SAM, sam_step  # noqa: E402
from sam.models import build_model  # noqa: E402
from sam.results import write_json  # noqa: E402
from sam.runtime import amp_settings, device_name, precision_name  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--m", default="1,4,16,64,128", help="comma-separated shard sizes")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="precision, as sam-train's amp")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as sam-train
    torch.manual_seed(0)
    # channels_last model and inputs as sam-train (the vmap path makes its shards NCHW)
    model = build_model(args.model, num_classes=10).to(device).to(
        memory_format=torch.channels_last)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    amp, _ = amp_settings(args.amp, device)

    def seconds(m: int, impl: str) -> float:
        step = lambda: sam_step(model, opt, F.cross_entropy, x, y, m=m, amp_dtype=amp,  # noqa: E731
                                shard_impl=impl)
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    ms = [int(v) for v in args.m.split(",")]
    cases = [(m, impl) for m in ms for impl in (("loop",) if m == args.batch else ("loop", "vmap"))]
    times: dict[tuple[int, str], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            times[case].append(seconds(*case))
    median = {c: statistics.median(t) for c, t in times.items()}
    plain = median[(args.batch, "loop")] if (args.batch, "loop") in median else None
    name = device_name(device)
    print(f"{name}  torch {torch.__version__}  {args.model}  batch {args.batch}"
          f"  precision {precision_name(amp)}")
    print(f"{'m':>5}{'loop ms':>10}{'vmap ms':>10}{'best/plain SAM':>16}")
    rows = []
    for m in ms:
        loop, vm = median.get((m, "loop")), median.get((m, "vmap"))
        best = min(t for t in (loop, vm) if t is not None)
        ratio = best / plain if plain else float("nan")
        print(f"{m:>5}{1000 * loop:>10.1f}{(1000 * vm if vm else float('nan')):>10.1f}"
              f"{ratio:>16.2f}")
        rows.append({"m": m, "loop_s": loop, "vmap_s": vm, "best_over_plain_sam": ratio})
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": name,
           "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cuda": torch.version.cuda, "model": args.model, "steps": args.steps,
           "rounds": args.rounds,
           "batch": args.batch, "amp": args.amp, "precision": precision_name(amp), "rows": rows}
    print(json.dumps(out))
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
