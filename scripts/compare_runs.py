"""Are two runs the same training? Compares two run directories (or two sweep directories,
run by run) bit for bit: every epoch's metrics in results.json (times and throughput left
out: they are the machine's), the final metrics, the summary's shared keys, the config as far
as it decides what is trained (``sam.results.comparable_config``: keys added since filled in
with what older runs trained with), and every tensor of the final checkpoint (weights,
optimizer state, RNG states).

    python scripts/compare_runs.py RUN_A RUN_B      # or two sweep directories

Prints one line per run pair and what differs; exits 1 when any pair differs. Used to check
that a change leaves training unchanged (e.g. `make demo` with deterministic=true before
and after a refactoring).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from sam.results import comparable_config

TIMES = ("images_per_sec", "epoch_time_s", "sharpness_time_s")
# in a checkpoint: compared above (history, config), or times
SKIPPED = ("history", "config", "wall_time_s", "elapsed_s", "started_at")


def run_dirs(root: Path) -> dict[str, Path]:
    """The run directories under ``root`` by their path relative to it ("." for a run)."""
    found = sorted(p.parent for p in root.rglob("results.json"))
    return {str(p.relative_to(root)): p for p in found}


def differences(a: Path, b: Path) -> list[str]:
    """What differs between runs ``a`` and ``b`` (empty: the same training, bit for bit)."""
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    out = []
    ha, hb = ([{k: v for k, v in h.items() if k not in TIMES} for h in r["history"]]
              for r in (ra, rb))
    if ha != hb:
        out.append(f"history differs ({len(ha)} vs {len(hb)} epochs)")
    if ra.get("final") != rb.get("final"):
        out.append("final metrics differ")
    for key in ("status", "label_noise"):
        if ra.get(key) != rb.get(key):
            out.append(f"{key} differs")
    sa, sb = ra["summary"], rb["summary"]
    out += [f"summary.{k} differs" for k in sa if k in sb and sa[k] != sb[k]]
    if comparable_config(ra["config"]) != comparable_config(rb["config"]):
        out.append("config differs (as far as it decides what is trained)")
    ca, cb = (torch.load(p / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
              for p in (a, b))
    differ = _leaf_differences(ca, cb)
    if differ:
        out.append(f"{len(differ)} checkpoint entries differ (first: {differ[0]})")
    return out


def _leaf_differences(x: Any, y: Any, name: str = "") -> list[str]:
    """The paths of the tensors and other leaves that differ between two nested states
    (a run's times and its history, compared above, left out)."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        same = (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y))
        return [] if same else [name]
    if isinstance(x, dict) and isinstance(y, dict):
        keys = sorted(set(x) | set(y), key=str)
        return [d for k in keys if k not in TIMES + SKIPPED
                for d in _leaf_differences(x.get(k), y.get(k), f"{name}.{k}")]
    if isinstance(x, list | tuple) and isinstance(y, list | tuple) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y, strict=True))
                for d in _leaf_differences(u, v, f"{name}[{i}]")]
    return [] if x == y else [name]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    a, b = (run_dirs(Path(p)) for p in argv)
    if set(a) != set(b):
        print(f"different runs: {sorted(set(a) ^ set(b))}")
        return 1
    failed = False
    for name in a:
        diff = differences(a[name], b[name])
        failed |= bool(diff)
        print(f"{name}: {'identical' if not diff else '; '.join(diff)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
