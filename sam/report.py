"""``sam-report``: tables and plots from the results.json files of a sweep.

Usage: ``sam-report DIR [DIR ...] [--out OUTDIR]`` (OUTDIR defaults to the first DIR).

Every results.json under the given directories is read (see :mod:`sam.results` for the
schema). Complete runs are grouped by ``(dataset, model, augment, epochs, eval_split)``
(eval_split "val" = the held-out training tail: no paper value beside it); each group gives
one table row per SAM setting ``(rho, m)``, beside the SGD runs of the same m (BatchNorm
shards change SGD too; when all SGD runs share one other m, those), plus a row for SGD runs
of an m no SAM row uses; the paper's Table 1 value beside each cell where the setting
matches, and the difference SAM - SGD of the means. A run trained twice with the same
config and seed (SGD in a sweep over rho, a rerun) counts once. Every other run (failed,
running, diverged, unreadable, duplicate) is listed with its path, status and error: none
is dropped silently.

Statistics of a cell, over its n seeds x_1..x_n (final-epoch test error in %, never the best
epoch):

    mean        x_bar = (1/n) sum_i x_i
    std         s = sqrt( sum_i (x_i - x_bar)^2 / (n - 1) )          (sample std, n >= 2)
    half-width  h = t_{0.975, n-1} * s / sqrt(n)                     (95% Student-t interval)

A cell reads ``x_bar ± h (n=k)``; with n = 1 the interval is undefined and the cell reads
``x_bar (n=1)``.

Outputs written to OUTDIR (atomically, via :func:`sam.results.atomic_write`): ``report.md``
(the printed report), ``report.csv`` (one line per table row, full precision), and the plots
``msharpness.png`` (test error vs rho, one line per m, SGD as a dashed reference; only for
groups whose SAM runs span at least 2 values of rho) and ``curves.png`` (test error vs epoch
from ``history``, mean over seeds; only when some run has a history).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam.results import RESULTS_FILE, atomic_write, comparable_config, flat_config, read_json

# Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
# ICLR 2021 (arXiv 2010.01412v3), Table 1: test error (%), mean ± 95% interval over 5 runs,
# laid out as in the paper: CIFAR-10 SAM, SGD, then CIFAR-100 SAM, SGD. The paper's SGD
# is the better of E and 2E epochs (its section 3.1). It labels only the WRN-28-10 rows with
# epochs; the 1800 of the other rows is their reference setup (official SAM code, AutoAugment).
_PAPER_TABLE1_TEXT = """
wrn28_10                 200  basic        2.7±0.1   3.5±0.1   16.5±0.2  18.8±0.2
wrn28_10                 200  cutout       2.3±0.1   2.6±0.1   14.9±0.2  16.9±0.1
wrn28_10                 200  autoaugment  2.1±<0.1  2.3±0.1   13.6±0.2  15.8±0.2
wrn28_10                 1800 basic        2.4±0.1   3.5±0.1   16.3±0.2  19.1±0.1
wrn28_10                 1800 cutout       2.1±0.1   2.7±0.1   14.0±0.1  17.4±0.1
wrn28_10                 1800 autoaugment  1.6±0.1   2.2±<0.1  12.8±0.2  16.1±0.2
shakeshake26_2x96d       1800 basic        2.3±<0.1  2.7±0.1   15.1±0.1  17.0±0.1
shakeshake26_2x96d       1800 cutout       2.0±<0.1  2.3±0.1   14.2±0.2  15.7±0.2
shakeshake26_2x96d       1800 autoaugment  1.6±<0.1  1.9±0.1   12.8±0.1  14.1±0.2
pyramidnet272            1800 basic        2.7±0.1   4.0±0.1   14.6±0.4  19.7±0.3
pyramidnet272            1800 cutout       1.9±0.1   2.5±0.1   12.6±0.2  16.4±0.1
pyramidnet272            1800 autoaugment  1.6±0.1   1.9±0.1   11.6±0.1  14.6±0.1
pyramidnet272_shakedrop  1800 basic        2.1±0.1   2.5±0.1   13.3±0.2  14.5±0.1
pyramidnet272_shakedrop  1800 cutout       1.6±<0.1  1.9±0.1   11.3±0.1  11.8±0.2
pyramidnet272_shakedrop  1800 autoaugment  1.4±<0.1  1.6±<0.1  10.3±0.1  10.6±0.1
"""


def _parse_table1(text: str) -> dict[tuple[str, str, str, int], tuple[str, str]]:
    """(dataset, model, augment, epochs) -> the paper's (SGD, SAM) cells as printed."""
    cells = {}
    for line in text.strip().splitlines():
        model, epochs, augment, *values = line.split()
        for dataset, (sam, sgd) in zip(("cifar10", "cifar100"), (values[:2], values[2:]),
                                       strict=True):
            cells[(dataset, model, augment, int(epochs))] = (sgd, sam)
    return cells


# Key: (dataset, model, augment, epochs) as in results.json ``summary``.
PAPER_TABLE1_CELLS = _parse_table1(_PAPER_TABLE1_TEXT)  # "3.5±0.1" as printed


def paper_mean(cell: str) -> float:
    """The mean of a paper cell: "2.1±<0.1" -> 2.1."""
    return float(cell.split("±")[0])


PAPER_TABLE1: dict[tuple[str, str, str, int], tuple[float, float]] = {
    key: (paper_mean(sgd), paper_mean(sam)) for key, (sgd, sam) in PAPER_TABLE1_CELLS.items()
}  # (SGD mean, SAM mean)

# eval_split: "test" (the official test set) or "val" (the held-out tail of the training
# set); results.json files from before it was recorded evaluated on the test set.
GROUP_KEYS = ("dataset", "model", "augment", "epochs", "eval_split")
GROUP_DEFAULTS = {"eval_split": "test"}
# Settings that should be equal within one table cell and between the SGD and SAM cells
# of a row; a mix is reported as a warning.
UNIFORM_KEYS = ("batch_size", "lr", "lam")
OPTIMS = ("sgd", "sam")

GroupKey = tuple[Any, ...]  # values of GROUP_KEYS
Setting = tuple[float, int | None]  # SAM (rho, m); m None means m = batch size

CSV_FIELDS = [
    *GROUP_KEYS,
    "rho",
    "m",
    "batch_size",
    "sgd_m",
    "sgd_n",
    "sgd_mean",
    "sgd_std",
    "sgd_half_width",
    "paper_sgd",
    "sam_n",
    "sam_mean",
    "sam_std",
    "sam_half_width",
    "paper_sam",
    "sam_minus_sgd",
]


# --------------------------------------------------------------------------- statistics


def t_two_sided_mass(t: float, df: int) -> float:
    """A(t | df) = P(|T| <= t) for T ~ Student t with integer ``df`` >= 1, exactly.

    Finite series of Abramowitz & Stegun 26.7.3, with theta = atan(t / sqrt(df)):

        df odd:  A = (2/pi) [theta + sin(theta) cos(theta) sum_{j=0}^{(df-3)/2} a_j c^j],
                 a_0 = 1, a_j = a_{j-1} * 2j / (2j + 1)      (the sum is empty for df = 1)
        df even: A = sin(theta) sum_{j=0}^{(df-2)/2} b_j c^j,
                 b_0 = 1, b_j = b_{j-1} * (2j - 1) / (2j)

    where c = cos^2(theta).
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    cos2 = cos * cos
    if df % 2 == 1:
        total, coef = 0.0, 1.0
        for j in range((df - 1) // 2):
            total += coef
            coef *= cos2 * (2 * j + 2) / (2 * j + 3)
        return (2.0 / math.pi) * (theta + sin * cos * total)
    total, coef = 0.0, 1.0
    for j in range(df // 2):
        total += coef
        coef *= cos2 * (2 * j + 1) / (2 * j + 2)
    return sin * total


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t_{p, df} (e.g. t_{0.975, 2} = 4.3027), without scipy.

    Inverts the exact CDF F(t) = (1 + A(t | df)) / 2 of :func:`t_two_sided_mass` by bisection
    on t >= 0 (F is increasing) down to machine precision; t_{p} = -t_{1-p} for p < 1/2.
    Cost O(df) per evaluation, which is nothing for the seed counts of a sweep.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    target = 2.0 * p - 1.0  # A(t) = 2 F(t) - 1
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_two_sided_mass(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Stats:
    """Summary of one cell's values: n, mean, sample std and 95% t half-width (see module doc).

    ``std`` and ``half_width`` are None when n = 1 (the interval is undefined)."""

    n: int
    mean: float
    std: float | None
    half_width: float | None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Stats:
    """Mean and half-width h = t_{(1+c)/2, n-1} * s / sqrt(n) of the t-interval of ``values``,
    where s = sqrt(sum (x - mean)^2 / (n - 1)) is the sample standard deviation."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Stats(1, mean, None, None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Stats(n, mean, std, half)


# --------------------------------------------------------------------------- collecting runs


def _result_files(path: Path) -> list[Path]:
    """results.json files under ``path`` (recursively), or ``path`` itself if it is one."""
    if path.is_file():
        return [path] if path.name == RESULTS_FILE else []
    return sorted(p for p in path.rglob(RESULTS_FILE) if p.is_file())


def _final_test_error(run: dict[str, Any]) -> float | None:
    """``final.test_error`` of a run as a finite float, or None."""
    final = run.get("final")
    value = final.get("test_error") if isinstance(final, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _group_value(summary: dict[str, Any], key: str) -> Any:
    return summary.get(key, GROUP_DEFAULTS.get(key))


def _problem(run: dict[str, Any]) -> str | None:
    """Why a run that says it is complete cannot be tabulated, or None if it can."""
    summary = run.get("summary")
    if not isinstance(summary, dict):
        return "no summary"
    missing = [k for k in (*GROUP_KEYS, "optim") if _group_value(summary, k) is None]
    if missing:
        return f"summary lacks {', '.join(missing)}"
    if summary["optim"] not in OPTIMS:
        return f"optim {summary['optim']!r} is neither sgd nor sam"
    if summary["optim"] == "sam" and not isinstance(summary.get("rho"), int | float):
        return "SAM run without a numeric rho"
    if _final_test_error(run) is None:
        return "no finite final.test_error"
    final_epoch = run["final"].get("epoch")
    if final_epoch is not None and final_epoch != summary["epochs"]:
        return f"final epoch {final_epoch} of {summary['epochs']}: not the last epoch"
    return None


def _load(path: Path) -> dict[str, Any]:
    """One results.json with its ``path`` added; an unreadable file gives status 'unreadable'."""
    try:
        run = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return {"path": str(path), "status": "unreadable", "error": f"{type(err).__name__}: {err}"}
    if not isinstance(run, dict):
        return {"path": str(path), "status": "unreadable", "error": "not a JSON object"}
    run["path"] = str(path)
    return run


def collect(dirs: list[Path]) -> tuple[list[dict], list[dict]]:
    """Read every results.json under ``dirs`` (recursively; a run directory itself works too).

    Returns (complete, others): ``complete`` are runs with status "complete", a usable summary
    and a finite ``final.test_error``; ``others`` are all the rest (failed, running, diverged,
    unreadable JSON, or complete but unusable, with ``error`` saying why; a second run of
    the same training config and seed gets status "duplicate"). Every dict is the
    parsed results.json plus ``path``; files reached twice through overlapping dirs count once.
    """
    complete: list[dict] = []
    others: list[dict] = []
    seen: set[Path] = set()
    for directory in dirs:
        for path in _result_files(Path(directory)):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            run = _load(path)
            if run.get("status") != "complete":
                others.append(run)
                continue
            problem = _problem(run)
            if problem is None:
                complete.append(run)
            else:
                others.append({**run, "error": run.get("error") or problem})
    first: dict[str, str] = {}
    unique = []
    for run in complete:  # a run trained twice is one measurement, not two seeds
        world = (run.get("distributed") or {}).get("world_size", 1)  # not in the config
        identity = json.dumps([training_config(run) or run["summary"], shard_m(run), world],
                              sort_keys=True, default=str)
        if identity in first:
            others.append({**run, "status": "duplicate",
                           "error": f"the same config and seed as {first[identity]}: "
                                    "counted once"})
        else:
            first[identity] = run["path"]
            unique.append(run)
    return unique, others


def training_config(run: dict[str, Any]) -> dict[str, Any] | None:
    """What a run trained with: its resolved config without the keys that do not change
    training (``sam.results.comparable_config``) and, for SGD, without the ``rho``
    shortcut it ignores; None when results.json holds no config."""
    config = run.get("config")
    if not isinstance(config, dict) or not config:
        return None
    out = comparable_config(config)
    if run["summary"]["optim"] == "sgd":
        out.pop("rho", None)
    return out


# --------------------------------------------------------------------------- grouping


def group_key(run: dict[str, Any]) -> GroupKey:
    """(dataset, model, augment, epochs, eval_split) of a run."""
    return tuple(_group_value(run["summary"], k) for k in GROUP_KEYS)


def paper_cells(key: GroupKey) -> tuple[str, str] | None:
    """The paper's Table 1 (SGD, SAM) cells of a group: only for test-set errors."""
    *table_key, eval_split = key
    return PAPER_TABLE1_CELLS.get(tuple(table_key)) if eval_split == "test" else None


def shard_m(run: dict[str, Any]) -> int | None:
    """A run's m (SAM: shard of its own eps; both optimizers: BatchNorm shards); an m
    equal to the batch size is normalised to None (= batch)."""
    summary = run["summary"]
    m = summary.get("m")
    return None if m is not None and m == summary.get("batch_size") else m


def run_precision(run: dict[str, Any]) -> str:
    """The precision a run trained in: its epochs' records in order ("fp32 then bf16" when
    it was resumed on a device that resolved amp=auto differently), else the run's own
    record, else "unrecorded" (results.json written before precision was recorded)."""
    epochs = [h.get("precision") for h in run.get("history") or []]
    seen = list(dict.fromkeys(p for p in epochs if p))
    return " then ".join(seen) if seen else run.get("precision") or "unrecorded"


def sam_setting(run: dict[str, Any]) -> Setting:
    """(rho, m) of a SAM run (m as in ``shard_m``)."""
    return run["summary"].get("rho"), shard_m(run)


def _setting_order(setting: Setting) -> tuple[float, float]:
    """Sort by rho, then m with None (= batch size, the largest m) last."""
    rho, m = setting
    return (rho, math.inf if m is None else m)


@dataclass
class Row:
    """One table row: a group, a SAM setting (or None without SAM runs) and both cells."""

    group: GroupKey
    setting: Setting | None
    sgd: Stats | None
    sam: Stats | None
    paper: tuple[str, str] | None  # the paper's (SGD, SAM) cells, as printed
    batch_sizes: tuple[Any, ...]
    sgd_m: int | None = None  # the BatchNorm shards of the SGD runs (None: the batch)

    @property
    def diff(self) -> float | None:
        """Difference of the means, SAM - SGD (percentage points)."""
        if self.sgd is None or self.sam is None:
            return None
        return self.sam.mean - self.sgd.mean


def _errors(runs: Iterable[dict[str, Any]]) -> list[float]:
    """``final.test_error`` of each run (finite for the runs ``collect`` calls complete)."""
    return [e for e in map(_final_test_error, runs) if e is not None]


def _group_order(key: GroupKey) -> tuple[tuple[int, Any], ...]:
    """Sort numbers numerically (epochs 50 before 200) and everything else as text."""
    return tuple((0, v) if isinstance(v, int | float) else (1, str(v)) for v in key)


def _by_group(runs: list[dict]) -> dict[GroupKey, list[dict]]:
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    return dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0])))


def _by_setting(sam_runs: list[dict]) -> dict[Setting, list[dict]]:
    settings: dict[Setting, list[dict]] = defaultdict(list)
    for run in sam_runs:
        settings[sam_setting(run)].append(run)
    return dict(sorted(settings.items(), key=lambda kv: _setting_order(kv[0])))


def _batch_sizes(runs: Iterable[dict[str, Any]]) -> tuple[Any, ...]:
    return tuple(sorted({r["summary"].get("batch_size") for r in runs}, key=str))


def _sgd_by_m(runs: list[dict]) -> dict[int | None, list[dict]]:
    """SGD runs by their BatchNorm shard size m (m changes how SGD trains too)."""
    by_m: dict[int | None, list[dict]] = defaultdict(list)
    for run in runs:
        if run["summary"]["optim"] == "sgd":
            by_m[shard_m(run)].append(run)
    return dict(sorted(by_m.items(), key=lambda kv: math.inf if kv[0] is None else kv[0]))


def build_rows(complete: list[dict]) -> list[Row]:
    """One row per (group, SAM setting), beside the SGD runs of the same m (or, when the
    SGD runs all share one other m, those: e.g. plain SGD beside an m-sharpness sweep);
    without SAM runs, one row per SGD m."""
    rows: list[Row] = []
    for key, runs in _by_group(complete).items():
        sgd_by_m = _sgd_by_m(runs)
        paper = paper_cells(key)
        settings = _by_setting([r for r in runs if r["summary"]["optim"] == "sam"])
        shown = set()
        for setting, sam_runs in settings.items():
            sam = t_interval(_errors(sam_runs))
            m = setting[1] if setting[1] in sgd_by_m or len(sgd_by_m) != 1 else \
                next(iter(sgd_by_m))
            sgd_runs = sgd_by_m.get(m, [])
            sgd = t_interval(_errors(sgd_runs)) if sgd_runs else None
            if sgd_runs:
                shown.add(m)
            rows.append(Row(key, setting, sgd, sam, paper, _batch_sizes(sam_runs), m))
        for m, sgd_runs in sgd_by_m.items():  # SGD runs no SAM row sits beside
            if m not in shown:
                rows.append(Row(key, None, t_interval(_errors(sgd_runs)), None, paper,
                                _batch_sizes(sgd_runs), m))
    return rows


def sgd_budget_lines(rows: list[Row]) -> list[str]:
    """The paper reports, for SGD, the better of E and 2E epochs (section 3.1). For each
    setting with SGD at both budgets: both means, the better one, and SAM(E) minus it."""
    sgd_at = {(row.group, row.sgd_m): row.sgd for row in rows if row.sgd is not None}
    lines = []
    for row in rows:
        dataset, model, augment, epochs, eval_split = row.group
        longer = sgd_at.get(((dataset, model, augment, 2 * epochs, eval_split), row.sgd_m))
        if row.sgd is None or longer is None:
            continue
        best = min(row.sgd.mean, longer.mean)
        sam_minus = f"{row.sam.mean - best:+.2f}" if row.sam is not None else "-"
        rho, m = ("-", "-") if row.setting is None else \
            (str(row.setting[0]), _m_text(row.setting[1], row.batch_sizes))
        lines.append([dataset, model, augment, epochs, eval_split, format_cell(row.sgd),
                      format_cell(longer), f"{best:.2f}", rho, m, sam_minus])
    if not lines:
        return []
    header = ["dataset", "model", "augment", "epochs E", "eval_split", "SGD E", "SGD 2E",
              "best SGD", "SAM rho", "SAM m", "SAM(E) - best SGD"]
    return ["", "## SGD at twice the epochs", ""] + _md_table(header, lines)


def _cells(complete: list[dict]) -> dict[tuple[Any, ...], list[dict]]:
    """Runs of each table cell: (group, optim, setting) -> runs."""
    cells: dict[tuple[Any, ...], list[dict]] = defaultdict(list)
    for run in complete:
        optim = run["summary"]["optim"]
        setting = sam_setting(run) if optim == "sam" else (None, shard_m(run))
        cells[(group_key(run), optim, setting)].append(run)
    return cells


def warnings_for(complete: list[dict]) -> list[str]:
    """Cells that mix settings other than the seed (lr, batch size, precision, ...) or
    repeat a seed."""
    notes: list[str] = []
    cells = _cells(complete)
    for (key, optim, setting), runs in cells.items():
        where = f"{'/'.join(map(str, key))} {_cell_text((key, optim, setting))}"
        for name in UNIFORM_KEYS:
            values = {str(r["summary"].get(name)) for r in runs}
            if len(values) > 1:
                notes.append(f"{where}: mixes {name} = {', '.join(sorted(values))}")
        precisions = {run_precision(r) for r in runs}
        if len(precisions) > 1:
            notes.append(f"{where}: mixes precision = {', '.join(sorted(precisions))}")
        notes += [f"{where}: mixes {key} = {values}" for key, values in _config_mix(runs)]
        shards = {_m_text(shard_m(r)) for r in runs}  # SGD cells: BatchNorm shard sizes
        if len(shards) > 1:
            notes.append(f"{where}: mixes m (BatchNorm shards) = {', '.join(sorted(shards))}")
        seeds = [r["summary"].get("seed") for r in runs]
        repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if repeated:
            notes.append(f"{where}: seed {', '.join(repeated)} appears more than once")
    return notes + _row_warnings(cells)


# compared by the summary checks of warnings_for (the seed differs by design)
_SUMMARY_CHECKED = {"seed", "lr", "lam", "batch_size", "m", "optim.lr", "optim.weight_decay"}


def _config_mix(runs: list[dict], limit: int = 5) -> list[tuple[str, str]]:
    """Training-config settings (see ``training_config``) that differ between the runs
    of one cell, beyond those the summary checks cover: e.g. optim.adaptive or the
    schedule. [(key, "v1, v2"), ...], at most ``limit``."""
    flats = [flat_config(c) for c in map(training_config, runs) if c is not None]
    if len(flats) < 2:
        return []
    keys = [k for k in dict.fromkeys(k for f in flats for k in f)
            if k not in _SUMMARY_CHECKED and len({repr(f.get(k)) for f in flats}) > 1]
    return [(k, ", ".join(sorted({str(f.get(k, "<unset>")) for f in flats})))
            for k in keys[:limit]]


def _row_warnings(cells: dict[tuple[Any, ...], list[dict]]) -> list[str]:
    """Groups whose cells are each uniform in a UNIFORM_KEYS setting but differ from one
    another (e.g. SGD at lr 0.1 beside SAM at lr 0.05): SAM - SGD would compare them."""
    notes: list[str] = []
    by_group: dict[GroupKey, dict[tuple[Any, ...], list[dict]]] = defaultdict(dict)
    for cell, runs in sorted(cells.items(), key=lambda kv: (
            _group_order(kv[0][0]), OPTIMS.index(kv[0][1]), _order_or_none(kv[0][2]))):
        by_group[cell[0]][cell] = runs
    for key, mine in by_group.items():
        for name in UNIFORM_KEYS:
            per_cell = {cell: {str(r["summary"].get(name)) for r in runs}
                        for cell, runs in mine.items()}
            if all(len(v) == 1 for v in per_cell.values()) and \
                    len(set().union(*per_cell.values())) > 1:
                parts = [f"{_cell_text(cell)} {name}={next(iter(v))}"
                         for cell, v in per_cell.items()]
                notes.append(f"{'/'.join(map(str, key))}: its cells differ in {name} "
                             f"({'; '.join(parts)}): SAM - SGD compares different settings")
    return notes


def _cell_text(cell: tuple[Any, ...]) -> str:
    _, optim, (rho, m) = cell
    if optim == "sgd":
        return "sgd" if m is None else f"sgd m={m}"
    return f"{optim} rho={rho} m={_m_text(m)}"


# --------------------------------------------------------------------------- formatting


def _m_text(m: int | None, batch_sizes: Sequence[Any] = ()) -> str:
    """m as shown: None (m = batch size) reads 'B' or 'B=128' when the batch size is known."""
    if m is not None:
        return str(m)
    sizes = [b for b in batch_sizes if b is not None]
    return f"B={sizes[0]}" if len(sizes) == 1 else "B"


def format_cell(stats: Stats | None) -> str:
    """'3.50 ± 0.25 (n=3)', '3.50 (n=1)', or '-' for an empty cell."""
    if stats is None:
        return "-"
    if stats.half_width is None:
        return f"{stats.mean:.2f} (n={stats.n})"
    return f"{stats.mean:.2f} ± {stats.half_width:.2f} (n={stats.n})"


def _paper_text(paper: tuple[str, str] | None, index: int) -> str:
    """The paper's cell (0: SGD, 1: SAM) as printed there, spaced: "2.7 ± 0.1"."""
    return "" if paper is None else paper[index].replace("±", " ± ")


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


TABLE_HEADER = [
    *GROUP_KEYS,
    "rho",
    "m",
    "SGD",
    "paper SGD",
    "SAM",
    "paper SAM",
    "SAM - SGD",
]


def table_lines(rows: list[Row]) -> list[str]:
    """The Markdown table of test errors (%)."""
    body = []
    for row in rows:
        if row.setting is None:  # SGD only: its m
            rho, m = "-", _m_text(row.sgd_m, row.batch_sizes)
        else:
            rho, m = str(row.setting[0]), _m_text(row.setting[1], row.batch_sizes)
        sgd = format_cell(row.sgd)
        if row.sgd is not None and row.setting is not None and row.sgd_m != row.setting[1]:
            sgd += f" [m={_m_text(row.sgd_m)}]"  # the only SGD runs of the group
        body.append(
            [
                *row.group,
                rho,
                m,
                sgd,
                _paper_text(row.paper, 0),
                format_cell(row.sam),
                _paper_text(row.paper, 1),
                "-" if row.diff is None else f"{row.diff:+.2f}",
            ]
        )
    return _md_table(TABLE_HEADER, body)


def _setting_text(run: dict[str, Any]) -> str:
    summary = run.get("summary")
    if not isinstance(summary, dict):
        return ""
    text = "/".join(str(summary.get(k)) for k in GROUP_KEYS) + f" {summary.get('optim')}"
    if summary.get("optim") == "sam":
        text += f" rho={summary.get('rho')} m={_m_text(summary.get('m'))}"
    return text + f" seed={summary.get('seed')}"


def others_lines(others: list[dict]) -> list[str]:
    """The table of runs left out of the statistics: path, status, setting, error."""
    body = [
        [r["path"], r.get("status", "unknown"), _setting_text(r), r.get("error") or ""]
        for r in others
    ]
    return _md_table(["path", "status", "setting", "error"], body)


def render_report(complete: list[dict], others: list[dict], dirs: Sequence[Path]) -> str:
    """The whole Markdown report: table, how to read it, warnings, and the runs left out."""
    rows = build_rows(complete)
    lines = [
        "# SAM report",
        "",
        f"Sources: {', '.join(str(d) for d in dirs)}. "
        f"{len(complete)} complete run(s) tabulated, {len(others)} other run(s) listed below.",
        "",
        "Final-epoch error (%) on the eval_split (test: the official test set; val: the "
        "held-out tail of the training set): mean ± half-width of the 95% Student-t interval "
        "over seeds (n = number of seeds; no interval for n=1). m = B: m-sharpness over the "
        "whole batch. Paper: Foret et al., ICLR 2021, Table 1 test errors (mean ± 95% "
        "interval over 5 runs; 8 GPUs x 32, i.e. m=32; its SGD is the better of E and 2E "
        "epochs), shown where dataset, model, augmentation and epochs match on the test "
        "split. SAM - SGD: difference of the means.",
        "",
    ]
    lines += table_lines(rows) if rows else ["No complete runs."]
    lines += sgd_budget_lines(rows)
    notes = warnings_for(complete)
    if notes:
        lines += ["", "## Warnings", ""] + [f"- {_md_escape(n)}" for n in notes]
    if others:
        lines += ["", f"## Runs not tabulated ({len(others)})", ""] + others_lines(others)
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _csv_m(m: int | None, batch_sizes: Sequence[Any]) -> Any:
    """m as a number: m = None (whole batch) is written as the batch size when it is unique."""
    sizes = [b for b in batch_sizes if b is not None]
    if m is None:
        return sizes[0] if len(sizes) == 1 else ""
    return m


def csv_text(rows: list[Row]) -> str:
    """report.csv: one line per table row, numbers at full precision, empty when undefined.

    ``m`` is numeric (the batch size for m-sharpness over the whole batch); ``batch_size``
    lists the batch sizes of the SAM runs of the row (of the SGD runs without SAM)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in rows:
        rho, m = row.setting if row.setting else (None, row.sgd_m)
        cells: list[Any] = [*row.group, "" if rho is None else rho]
        cells.append(_csv_m(m, row.batch_sizes))
        cells.append(" ".join(str(b) for b in row.batch_sizes))
        cells.append("" if row.sgd is None else _csv_m(row.sgd_m, row.batch_sizes))
        for index, stats in enumerate((row.sgd, row.sam)):
            if stats is None:
                cells += ["", "", "", ""]
            else:
                cells += [stats.n, _num(stats.mean), _num(stats.std), _num(stats.half_width)]
            cells.append("" if row.paper is None else paper_mean(row.paper[index]))
        cells.append(_num(row.diff))
        writer.writerow(cells)
    return buffer.getvalue()


# --------------------------------------------------------------------------- plots


def _new_figure(n_axes: int) -> tuple[Any, list[Any]]:
    """An Agg-backed figure with ``n_axes`` subplots (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n_axes, 3)
    nrows = math.ceil(n_axes / ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_axes:]:
        ax.set_visible(False)
    return fig, axes[:n_axes]


def _save_png(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)


def _m_label(m: int | None, batch_sizes: Sequence[Any]) -> str:
    if m is not None:
        return f"m = {m}"
    sizes = [b for b in batch_sizes if b is not None]
    return f"m = batch size ({sizes[0]})" if len(sizes) == 1 else "m = batch size"


def _msharpness_axes(key: GroupKey, runs: list[dict], ax: Any) -> None:
    """Test error vs rho for one group: one line per m (mean ± t half-width), SGD dashed."""
    sam_runs = [r for r in runs if r["summary"]["optim"] == "sam"]
    by_m: dict[int | None, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in sam_runs:
        rho, m = sam_setting(run)
        by_m[m][rho].append(run)
    for m in sorted(by_m, key=lambda v: math.inf if v is None else v):
        rhos = sorted(by_m[m])
        stats = [t_interval(_errors(by_m[m][rho])) for rho in rhos]
        yerr = [s.half_width or 0.0 for s in stats]
        label = _m_label(m, _batch_sizes(r for rho in rhos for r in by_m[m][rho]))
        ax.errorbar(rhos, [s.mean for s in stats], yerr=yerr, marker="o", capsize=3, label=label)
    styles = itertools.cycle(("--", ":", "-."))
    for (m, sgd_runs), style in zip(_sgd_by_m(runs).items(), styles, strict=False):
        sgd = t_interval(_errors(sgd_runs))  # one line per SGD BatchNorm shard size
        ax.axhline(sgd.mean, color="k", linestyle=style,
                   label=_curve_label("sgd", (None, m), sgd_runs))
    all_rhos = sorted({sam_setting(r)[0] for r in sam_runs})
    if all_rhos[0] > 0 and all_rhos[-1] / all_rhos[0] >= 10:
        ax.set_xscale("log")
    ax.set(title="/".join(map(str, key)), xlabel="rho", ylabel="final test error (%)")
    ax.legend(fontsize="small")


def _rho_count(runs: list[dict]) -> int:
    return len({sam_setting(r)[0] for r in runs if r["summary"]["optim"] == "sam"})


def plot_msharpness(complete: list[dict], path: Path) -> bool:
    """Write msharpness.png for groups whose SAM runs span >= 2 rho values; False if none."""
    groups = {k: v for k, v in _by_group(complete).items() if _rho_count(v) >= 2}
    if not groups:
        return False
    fig, axes = _new_figure(len(groups))
    for ax, (key, runs) in zip(axes, groups.items(), strict=True):
        _msharpness_axes(key, runs, ax)
    _save_png(fig, path)
    return True


def _history_curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    """Mean test error over seeds at each epoch any of the runs recorded."""
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for entry in run.get("history") or []:
            value = entry.get("test_error") if isinstance(entry, dict) else None
            if isinstance(value, int | float) and entry.get("epoch") is not None:
                per_epoch[int(entry["epoch"])].append(float(value))
    epochs = sorted(per_epoch)
    return epochs, [math.fsum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def _curve_label(optim: str, setting: Setting, runs: list[dict]) -> str:
    rho, m = setting
    if optim == "sgd":
        return "SGD" + ("" if m is None else f" m = {m}") + f" (n={len(runs)})"
    return f"SAM rho={rho} {_m_label(m, _batch_sizes(runs))} (n={len(runs)})"


def plot_curves(complete: list[dict], path: Path) -> bool:
    """Write curves.png: test error vs epoch, one line per (optim, rho, m) per group, mean over
    seeds. Returns False (and writes nothing) when no run has a history."""
    from matplotlib.ticker import MaxNLocator

    curves: dict[GroupKey, list[tuple[str, list[int], list[float]]]] = defaultdict(list)
    cells = sorted(_cells(complete).items(), key=lambda kv: _order_or_none(kv[0][2]))
    for (key, optim, setting), runs in cells:
        epochs, errors = _history_curve(runs)
        if epochs:
            curves[key].append((_curve_label(optim, setting, runs), epochs, errors))
    if not curves:
        return False
    groups = sorted(curves.items(), key=lambda kv: _group_order(kv[0]))
    fig, axes = _new_figure(len(groups))
    for ax, (key, lines) in zip(axes, groups, strict=True):
        for label, epochs, errors in lines:
            if label.startswith("SGD"):
                ax.plot(epochs, errors, color="k", linestyle="--", label=label)
            else:
                ax.plot(epochs, errors, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title="/".join(map(str, key)), xlabel="epoch", ylabel="test error (%)")
        ax.legend(fontsize="small")
    _save_png(fig, path)
    return True


def _order_or_none(setting: Setting | None) -> tuple[float, float]:
    """SGD cells ((None, m)) first, by m; then SAM settings by rho, m."""
    if setting is None or setting[0] is None:
        m = setting[1] if setting is not None else None
        return (-math.inf, math.inf if m is None else m)
    return _setting_order(setting)


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sam-report",
        description="Tables (Markdown, CSV) and plots from the results.json files of a sweep.",
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
    empty = [str(d) for d in dirs if not _result_files(d)]
    if empty:
        return (f"sam-report: error: no {RESULTS_FILE} found under: {', '.join(empty)}: pass "
                "the directory of sam-train runs (or wait until a run has started)")
    return None


def main(argv: list[str] | None = None) -> int:
    """``sam-report DIR [DIR ...] [--out OUTDIR]``: print the report, write report.md,
    report.csv, msharpness.png and curves.png (when there is something to plot).

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
    table_csv = csv_text(build_rows(complete))
    atomic_write(out / "report.csv", lambda f: f.write(table_csv))
    written = [out / "report.md", out / "report.csv"]
    for name, plot in (("msharpness.png", plot_msharpness), ("curves.png", plot_curves)):
        if plot(complete, out / name):
            written.append(out / name)
    print(f"sam-report: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
