"""Warnings about cells that compare unlike runs.

A cell (one group, optim and setting) should differ only in the seed; a warning names any
other setting its runs mix (lr, batch size, lam, precision, BatchNorm shards, any other
training-config key) and any repeated seed. A row compares an SGD cell with a SAM cell:
when each is uniform in a setting but the two differ (SGD at lr 0.1 beside SAM at lr 0.05),
SAM - SGD compares different settings, which is warned too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sam.report.rows import cell_order, group_order, optim_order, runs_by_cell
from sam.report.runs import GroupKey, run_precision, shard_m, training_config
from sam.report.tables import m_text
from sam.results import flat_config

# Settings that should be equal within one table cell and between the SGD and SAM cells
# of a row; a mix is reported as a warning.
UNIFORM_KEYS = ("batch_size", "lr", "lam")

# compared by the summary checks of warnings_for (the seed differs by design)
_SUMMARY_CHECKED = {"seed", "lr", "lam", "batch_size", "m", "optim.lr", "optim.weight_decay"}


def _cell_text(cell: tuple[Any, ...]) -> str:
    _, optim, (rho, m) = cell
    if optim == "sgd":
        return "sgd" if m is None else f"sgd m={m}"
    return f"{optim} rho={rho} m={m_text(m)}"


def warnings_for(complete: list[dict]) -> list[str]:
    """Cells that mix settings other than the seed (lr, batch size, precision, ...) or
    repeat a seed."""
    notes: list[str] = []
    cells = runs_by_cell(complete)
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
        shards = {m_text(shard_m(r)) for r in runs}  # SGD cells: BatchNorm shard sizes
        if len(shards) > 1:
            notes.append(f"{where}: mixes m (BatchNorm shards) = {', '.join(sorted(shards))}")
        seeds = [r["summary"].get("seed") for r in runs]
        repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if repeated:
            notes.append(f"{where}: seed {', '.join(repeated)} appears more than once")
    return notes + _row_warnings(cells)


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


def _setting_of(run: dict[str, Any], name: str) -> str:
    return run_precision(run) if name == "precision" else str(run["summary"].get(name))


def _row_warnings(cells: dict[tuple[Any, ...], list[dict]]) -> list[str]:
    """Groups whose cells are each uniform in a UNIFORM_KEYS setting or the precision but
    differ from one another (e.g. SGD at lr 0.1 beside SAM at lr 0.05): SAM - SGD would
    compare them."""
    notes: list[str] = []
    by_group: dict[GroupKey, dict[tuple[Any, ...], list[dict]]] = defaultdict(dict)
    for cell, runs in sorted(cells.items(), key=lambda kv: (
            group_order(kv[0][0]), optim_order(kv[0][1]), cell_order(kv[0][2]))):
        by_group[cell[0]][cell] = runs
    for key, mine in by_group.items():
        for name in (*UNIFORM_KEYS, "precision"):
            per_cell = {cell: {_setting_of(r, name) for r in runs}
                        for cell, runs in mine.items()}
            if all(len(v) == 1 for v in per_cell.values()) and \
                    len(set().union(*per_cell.values())) > 1:
                parts = [f"{_cell_text(cell)} {name}={next(iter(v))}"
                         for cell, v in per_cell.items()]
                notes.append(f"{'/'.join(map(str, key))}: its cells differ in {name} "
                             f"({'; '.join(parts)}): SAM - SGD compares different settings")
    return notes
