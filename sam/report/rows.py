"""Grouping complete runs into table cells and rows.

A group is the values of GROUP_KEYS, ``(dataset, model, augment, epochs, eval_split,
fidelity, label_noise, init_seed)``: runs of another split, fidelity or initial-weights
seed never share a row. Within it a cell is
``(optim, setting)``: SAM cells by ``(rho, m)``, SGD cells by ``(None, m)`` where m is the
BatchNorm shard size (it changes how SGD trains too). A table row is one SAM setting beside
the SGD cell of the same m (when all SGD runs share one other m, those: e.g. plain SGD beside
an m-sharpness sweep), plus a row for SGD runs of an m no SAM row uses. A row also
carries the precisions its runs trained in (``run_precision``). SAM variants (GSAM,
LookSAM, the ablations: summary.variant) are cells and rows of their own, beside the same
SGD cell (the paper's cells only beside plain SAM); a row carries its cells' mean
throughput (``images_per_sec``) for the cost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sam.report.paper import paper_cells
from sam.report.runs import (
    GroupKey,
    Setting,
    cell_optim,
    final_errors,
    group_key,
    images_per_sec,
    run_precision,
    sam_setting,
    shard_m,
    variant,
)
from sam.report.stats import Stats, t_interval


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
    precisions: tuple[str, ...] = ()  # the distinct precisions of its SGD and SAM runs
    variant: str | None = None  # the SAM cell's variant ("sam": plain SAM)
    sgd_ips: float | None = None  # mean images/s of the SGD runs (None: not recorded)
    sam_ips: float | None = None  # the same for the SAM cell

    @property
    def time_ratio(self) -> float | None:
        """Time per training image of the SAM cell over SGD's, from the runs' own
        throughput: (SGD images/s) / (SAM images/s), the cost of a SAM step in SGD steps."""
        if self.sgd_ips is None or self.sam_ips is None:
            return None
        return self.sgd_ips / self.sam_ips

    @property
    def diff(self) -> float | None:
        """Difference of the means, SAM - SGD (percentage points)."""
        if self.sgd is None or self.sam is None:
            return None
        return self.sam.mean - self.sgd.mean


def _setting_order(setting: Setting) -> tuple[float, float]:
    """Sort by rho, then m with None (= batch size, the largest m) last."""
    rho, m = setting
    return (rho, math.inf if m is None else m)


def cell_order(setting: Setting | None) -> tuple[float, float]:
    """SGD cells ((None, m)) first, by m; then SAM settings by rho, m."""
    if setting is None or setting[0] is None:
        m = setting[1] if setting is not None else None
        return (-math.inf, math.inf if m is None else m)
    return _setting_order(setting)


def optim_order(optim: str) -> tuple[int, str]:
    """Cells by optimizer: SGD, plain SAM, then the SAM variants by name."""
    return (0, "") if optim == "sgd" else (1, "") if optim == "sam" else (2, optim)


def mean_ips(runs: Iterable[dict[str, Any]]) -> float | None:
    """The mean ``images_per_sec`` of the runs that recorded one, or None."""
    values = [v for v in map(images_per_sec, runs) if v is not None]
    return math.fsum(values) / len(values) if values else None


def group_order(key: GroupKey) -> tuple[tuple[int, Any], ...]:
    """Sort numbers numerically (epochs 50 before 200) and everything else as text."""
    return tuple((0, v) if isinstance(v, int | float) else (1, str(v)) for v in key)


def runs_by_group(runs: list[dict]) -> dict[GroupKey, list[dict]]:
    """Runs of each group, groups in ``group_order``."""
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    return dict(sorted(groups.items(), key=lambda kv: group_order(kv[0])))


def _by_setting(sam_runs: list[dict]) -> dict[tuple[str, Setting], list[dict]]:
    """SAM runs by (variant, setting), plain SAM first."""
    settings: dict[tuple[str, Setting], list[dict]] = defaultdict(list)
    for run in sam_runs:
        settings[(variant(run) or "sam", sam_setting(run))].append(run)
    return dict(sorted(settings.items(), key=lambda kv: (optim_order(kv[0][0]),
                                                         _setting_order(kv[0][1]))))


def batch_sizes_of(runs: Iterable[dict[str, Any]]) -> tuple[Any, ...]:
    """The distinct batch sizes of ``runs``, sorted."""
    return tuple(sorted({r["summary"].get("batch_size") for r in runs}, key=str))


def precisions_of(runs: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The distinct precisions ``runs`` trained in (``run_precision``), sorted."""
    return tuple(sorted({run_precision(r) for r in runs}))


def sgd_runs_by_m(runs: list[dict]) -> dict[int | None, list[dict]]:
    """SGD runs by their BatchNorm shard size m (m changes how SGD trains too)."""
    by_m: dict[int | None, list[dict]] = defaultdict(list)
    for run in runs:
        if run["summary"]["optim"] == "sgd":
            by_m[shard_m(run)].append(run)
    return dict(sorted(by_m.items(), key=lambda kv: math.inf if kv[0] is None else kv[0]))


def runs_by_cell(complete: list[dict]) -> dict[tuple[Any, ...], list[dict]]:
    """Runs of each table cell: (group, optim, setting) -> runs."""
    cells: dict[tuple[Any, ...], list[dict]] = defaultdict(list)
    for run in complete:
        optim = cell_optim(run)  # a SAM variant is a cell of its own
        setting = (None, shard_m(run)) if optim == "sgd" else sam_setting(run)
        cells[(group_key(run), optim, setting)].append(run)
    return cells


def build_rows(complete: list[dict]) -> list[Row]:
    """One row per (group, SAM setting), beside the SGD runs of the same m (or, when the
    SGD runs all share one other m, those: e.g. plain SGD beside an m-sharpness sweep);
    without SAM runs, one row per SGD m."""
    rows: list[Row] = []
    for key, runs in runs_by_group(complete).items():
        sgd_by_m = sgd_runs_by_m(runs)
        paper = paper_cells(key)
        settings = _by_setting([r for r in runs if r["summary"]["optim"] == "sam"])
        shown = set()
        for (name, setting), sam_runs in settings.items():
            sam = t_interval(final_errors(sam_runs))
            m = setting[1] if setting[1] in sgd_by_m or len(sgd_by_m) != 1 else \
                next(iter(sgd_by_m))
            sgd_runs = sgd_by_m.get(m, [])
            sgd = t_interval(final_errors(sgd_runs)) if sgd_runs else None
            if sgd_runs:
                shown.add(m)
            rows.append(Row(key, setting, sgd, sam, paper if name == "sam" else None,
                            batch_sizes_of(sam_runs), m, precisions_of(sam_runs + sgd_runs),
                            name, mean_ips(sgd_runs), mean_ips(sam_runs)))
        for m, sgd_runs in sgd_by_m.items():  # SGD runs no SAM row sits beside
            if m not in shown:
                rows.append(Row(key, None, t_interval(final_errors(sgd_runs)), None, paper,
                                batch_sizes_of(sgd_runs), m, precisions_of(sgd_runs),
                                sgd_ips=mean_ips(sgd_runs)))
    return rows
