"""The demo's closing lines (``python -m sam.report.demo DIR``, after ``make demo``): what
its SGD and SAM runs under label noise showed, seed by seed, and what they do not show.

The lines are computed from the runs, never written in advance: a seed on which SAM's
final test error is not below SGD's is said to be one. The setting's measurement over
five seeds is the record named in ``RECORD``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from sam.report.best_epoch import best_epoch_error
from sam.report.runs import collect
from sam.report.stats import t_interval
from sam.report.tables import format_cell

RECORD = "benchmarks/demo_2026-12-08.md"
NOT_SHOWN = (
    "Not shown: SAM's gain with clean labels, which needs longer training than a demo "
    "(benchmarks/miniature_2026-12-06.md, `make miniature`, 59 min: not yet at 20 epochs; "
    "the paper trains 200 epochs on all 50,000 images), nor the paper's own numbers "
    "(Table 4: ResNet-32, 200 epochs; experiment=table4_label_noise)."
)


def noisy_pairs(complete: list[dict]) -> list[tuple[dict, dict]]:
    """(SGD run, SAM run) per seed among plain label-noise runs: same seed, same noisy
    labels (their hash), no Mixup, no bootstrap; ordered by seed."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for run in complete:
        summary, noise = run.get("summary") or {}, run.get("label_noise") or {}
        if not summary.get("label_noise") or summary.get("bootstrap") \
                or summary.get("mixup_alpha") or summary.get("optim") not in ("sgd", "sam") \
                or summary.get("variant") not in (None, "sam"):
            continue
        key = (summary.get("seed"), noise.get("hash"))
        by_key.setdefault(key, {})[summary["optim"]] = run
    pairs = [(runs["sgd"], runs["sam"]) for runs in by_key.values() if len(runs) == 2]
    return sorted(pairs, key=lambda pair: pair[0]["summary"]["seed"])


def _train_error(run: dict) -> float:
    return float(run["history"][-1]["train_error"])


def demo_lines(complete: list[dict], curves: str = "curves.png") -> list[str]:
    """What the label-noise SGD/SAM pairs of ``complete`` show: the setting, SAM's and SGD's
    final test error per seed and how many seeds have SAM lower, the training error each
    reached on the noisy labels (below the wrong share = wrong labels learnt), SGD's rise
    from its best epoch; then what the demo does not show."""
    pairs = noisy_pairs(complete)
    if not pairs:
        return ["No SGD/SAM pair trained on noisy labels here: nothing to conclude. " + NOT_SHOWN]
    sgd0 = pairs[0][0]
    fake = str(sgd0["summary"]["dataset"]).startswith("synthetic")  # or its fallback's label
    synthetic = [] if not fake and not sgd0.get("synthetic_fallback") else [
        "These runs trained on SYNTHETIC data (random images): whatever they show says "
        "nothing about SAM. Real CIFAR-10 in data/ (or SAM_DATA) makes the demo mean "
        "something."
    ]
    summary, noise = sgd0["summary"], sgd0["label_noise"]
    images = (sgd0.get("config") or {}).get("dataset", {}).get("subset")
    wrong = 100.0 * noise["changed"] / images if images else None
    setting = (
        f"{summary['dataset']}, {images or 'all'} training images with label_noise "
        f"{summary['label_noise']} ({noise['changed']} labels changed"
        + (f": {wrong:.0f}% wrong" if wrong is not None else "")
        + f"), {summary['model']}, {summary['epochs']} epochs, SAM rho "
        f"{pairs[0][1]['summary']['rho']}, {len(pairs)} seed(s)"
    )
    lower = sum(sam["final"]["test_error"] < sgd["final"]["test_error"] for sgd, sam in pairs)
    gaps = [sam["final"]["test_error"] - sgd["final"]["test_error"] for sgd, sam in pairs]
    per_seed = "; ".join(
        f"seed {sgd['summary']['seed']}: SAM {sam['final']['test_error']:.1f}% vs SGD "
        f"{sgd['final']['test_error']:.1f}% (training error SAM {_train_error(sam):.1f}%, "
        f"SGD {_train_error(sgd):.1f}%; SGD's best epoch {best_epoch_error(sgd):.1f}%)"
        for sgd, sam in pairs
    )
    verdict = (
        f"SAM's final test error is lower on {lower} of {len(pairs)} seed(s) "
        f"(SAM - SGD: {format_cell(t_interval(gaps))} points)"
    )
    if lower < len(pairs):
        verdict += f"; NOT on every seed here (the record, {RECORD}, says how often)"
    return [
        *synthetic,
        f"Shown ({setting}): {verdict}. {per_seed}.",
        "A training error (on the noisy labels) below the wrong share means wrong labels "
        f"were learnt by heart. Test error per epoch: {curves}.",
        NOT_SHOWN,
    ]


def main(argv: Sequence[str]) -> int:
    """Print the demo's closing lines for the runs below the directories in ``argv``."""
    if not argv:
        print("usage: python -m sam.report.demo DIR [DIR ...]", file=sys.stderr)
        return 2
    complete, _ = collect([Path(a) for a in argv])
    print("\n".join(demo_lines(complete, str(Path(argv[0]) / "curves.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
