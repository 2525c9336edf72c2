"""The ``sam-report`` command: ``sam-report DIR [DIR ...] [--out OUTDIR]``.

Reads every results.json under the DIRs (:func:`sam.report.runs.collect`), prints the
report and writes to OUTDIR (default: the first DIR; atomically, via
:func:`sam.results.atomic_write`): ``report.md`` (the printed report), ``report.csv`` (one
line per table row, full precision), and ``msharpness.png`` / ``curves.png`` /
``sharpness.png`` / ``spectrum.png`` when there is something to plot
(:mod:`sam.report.plots`, :mod:`sam.report.sharpness_table`, :mod:`sam.report.spectrum`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sam.report.best_epoch import best_epoch_lines
from sam.report.checks import warnings_for
from sam.report.plots import plot_curves, plot_msharpness
from sam.report.rows import build_rows
from sam.report.runs import collect, result_files
from sam.report.sharpness_table import plot_sharpness, sharpness_lines
from sam.report.spectrum import plot_spectrum, spectrum_lines
from sam.report.table4 import relabelled, table4_lines
from sam.report.tables import csv_text, md_escape, others_lines, sgd_budget_lines, table_lines
from sam.results import RESULTS_FILE, atomic_write


def render_report(complete: list[dict], others: list[dict], dirs: Sequence[Path]) -> str:
    """The whole Markdown report: table, how to read it, warnings, and the runs left out."""
    plain = [r for r in complete if not relabelled(r)]  # Mixup/bootstrap: Table 4 only
    rows = build_rows(plain)
    lines = [
        "# SAM report",
        "",
        f"Sources: {', '.join(str(d) for d in dirs)}. "
        f"{len(complete)} complete run(s) tabulated, {len(others)} other run(s) listed below.",
        "",
        "Final-epoch error (%) on the eval_split (test: the official test set; val: the "
        "held-out tail of the training set): mean ± half-width of the 95% Student-t interval "
        "over seeds (n = number of seeds; no interval for n=1). fidelity: official = trained "
        "as google-research/sam, pytorch = as davda54/sam (runs recorded before fidelity "
        "was: pytorch). init_seed: 0 = every seed started from the same weights (as the "
        "official code), seed = each run's seed drew its weights. precision: what the "
        "row's runs trained in. m = B: m-sharpness over "
        "the whole batch. Paper: Foret et al., ICLR 2021, Table 1 test errors from the "
        "official code, so fidelity=official is the like-for-like comparison (mean ± 95% "
        "interval over 5 runs; 8 GPUs x 32, i.e. m=32; its SGD is the better of E and 2E "
        "epochs), shown where dataset, model, augmentation and epochs match on the test "
        "split, for either fidelity. SVHN and Fashion-MNIST rows: Table 5, matched on "
        "dataset, model and augmentation (the paper states no epochs). label_noise > 0 "
        "rows: Table 4 (ResNet-32, CIFAR-10, 200 epochs), which reports accuracy: shown as "
        "100 - accuracy, no interval. SAM - SGD: difference of the means.",
        "",
    ]
    lines += table_lines(rows) if rows else ["No complete runs."]
    lines += sgd_budget_lines(rows)
    lines += best_epoch_lines(rows, plain)
    lines += table4_lines(complete)  # SGD, Mixup, Bootstrap, SAM by noise level
    lines += sharpness_lines(rows, plain)
    lines += spectrum_lines(complete)
    notes = warnings_for(plain)
    if notes:
        lines += ["", "## Warnings", ""] + [f"- {md_escape(n)}" for n in notes]
    if others:
        lines += ["", f"## Runs not tabulated ({len(others)})", ""] + others_lines(others)
    return "\n".join(lines) + "\n"


_DESCRIPTION = """\
sam-report: the paper's tables from sam-train runs. It reads every results.json below the
DIRs (sweeps or single runs) and compares SGD with SAM: final-epoch test error, mean and
95% t-interval over seeds, SAM - SGD, and the paper's Table 1 value beside matching
settings. A row holds the runs of one training setting (dataset, model, augmentation,
epochs, evaluation split, fidelity...); a cell whose runs differ in anything but the seed
is flagged, and failed or unfinished runs are listed."""

_EPILOG = """\
examples:
  sam-report outputs/multirun/2026-05-01/12-00-00       one sweep
  sam-report outputs/multirun                           every sweep below outputs/multirun
  sam-report outputs/demo/<date> --out /tmp/report      write the files elsewhere
  python -m sam.report outputs/multirun                 the same, without the script

outputs (in OUTDIR, default the first DIR): report.md (also printed), report.csv (one
line per table row, full precision), curves.png (test error per epoch),
msharpness.png (error vs m), sharpness.png (error vs lambda_max) and spectrum.png (the
Hessian spectrum per epoch, SGD vs SAM: runs with sharpness.slq_runs > 0) when there is
something to plot. Exit status 2 when a DIR is
missing or holds no results.json. More: docs/reports.md."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sam-report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="directories searched recursively for results.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="OUTDIR",
        help="where report.md, report.csv and the plots go (default: first DIR)",
    )
    return parser.parse_args(argv)


def _check_dirs(dirs: list[Path]) -> str | None:
    """A one-line complaint about missing directories or ones without results.json, or None."""
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        return (f"sam-report: error: no such directory: {', '.join(missing)}: pass a sweep "
                "or run directory (outputs/multirun/<date>/<time>)")
    empty = [str(d) for d in dirs if not result_files(d)]
    if empty:
        return (f"sam-report: error: no {RESULTS_FILE} found under: {', '.join(empty)}: pass "
                "the directory of sam-train runs (or wait until a run has started)")
    return None


def main(argv: list[str] | None = None) -> int:
    """``sam-report DIR [DIR ...] [--out OUTDIR]``: print the report, write report.md,
    report.csv, msharpness.png, curves.png, sharpness.png and spectrum.png (when there is
    something to plot).

    Returns 0, or 2 when a DIR is missing or holds no results.json."""
    args = _parse_args(argv)
    complaint = _check_dirs(args.dirs)
    if complaint:
        print(complaint, file=sys.stderr)
        return 2
    first = args.dirs[0]
    out: Path = args.out or (first if first.is_dir() else first.parent)
    complete, others = collect(args.dirs)
    report = render_report(complete, others, args.dirs)
    print(report, end="")
    atomic_write(out / "report.md", lambda f: f.write(report))
    table_csv = csv_text(build_rows([r for r in complete if not relabelled(r)]))
    atomic_write(out / "report.csv", lambda f: f.write(table_csv))
    written = [out / "report.md", out / "report.csv"]
    for name, plot in (("msharpness.png", plot_msharpness), ("curves.png", plot_curves),
                       ("sharpness.png", plot_sharpness), ("spectrum.png", plot_spectrum)):
        if plot(complete, out / name):
            written.append(out / name)
    print(f"sam-report: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
