"""The paper's Table 4 (label noise) as one section: SGD, Mixup, Bootstrap + Mixup, SAM and
Bootstrap + SAM at each noise level, our final-epoch error beside the paper's.

A run's row is its method: the optimizer (``cell_optim``: SGD, SAM or a SAM variant), with
Mixup (``summary.mixup_alpha`` > 0) and bootstrap labels (``summary.bootstrap``, the source
run) named: "Mixup" is SGD with Mixup, "Bootstrap + SAM" SAM on a finished SAM run's labels;
any other combination (SAM + Mixup, Bootstrap + SGD, ...) gets a row of its own, without a
paper value. Mixup and bootstrap runs appear only here: the main table compares plain SGD
with plain SAM (``relabelled`` tells them apart).

A cell holds the runs of one row, noise level and setting (rho for SAM, m, alpha), seeds
pooled. Where a row has several settings at one noise level, the one shown is the paper's
rho for SAM when it was run (PAPER_TABLE4_RHO), else the setting of the lowest mean error:
for Mixup the best alpha per noise level, as the paper reports it. That choice is made on the
test set (marked *; every setting is listed under the table), like the best-epoch table:
a picture of the best the method reached, not a held-out result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sam.report.paper import PAPER_TABLE4_RHO, PAPER_TABLE4_ROWS, paper_table4_cell
from sam.report.runs import GROUP_KEYS, cell_optim, final_errors, group_key, shard_m
from sam.report.stats import Stats, t_interval
from sam.report.tables import _md_table, format_cell, m_text

ROW_ORDER = tuple(PAPER_TABLE4_ROWS)  # SGD, Mixup, Bootstrap + Mixup, SAM, Bootstrap + SAM
CONTEXT_KEYS = tuple(k for k in GROUP_KEYS if k != "label_noise")  # a table's columns: noise

CellSetting = tuple[Any, Any, float]  # (rho or None, m, alpha)


def mixup_alpha(run: dict[str, Any]) -> float:
    """The run's Mixup alpha (0.0: no Mixup; runs recorded before Mixup: 0.0)."""
    return float(run["summary"].get("mixup_alpha") or 0.0)


def bootstrapped(run: dict[str, Any]) -> bool:
    """Whether the run trained on another run's predicted labels (summary.bootstrap)."""
    return bool(run["summary"].get("bootstrap"))


def relabelled(run: dict[str, Any]) -> bool:
    """Whether the run trained with Mixup or bootstrap labels (Table 4's other rows)."""
    return mixup_alpha(run) > 0 or bootstrapped(run)


def method(run: dict[str, Any]) -> str:
    """The run's Table 4 row: "SGD", "Mixup" (SGD + Mixup), "SAM", a SAM variant's name,
    "<optimizer> + Mixup", each prefixed "Bootstrap + " on bootstrap labels."""
    optim = cell_optim(run)
    name = {"sgd": "SGD", "sam": "SAM"}.get(optim, optim)
    if mixup_alpha(run) > 0:
        name = "Mixup" if optim == "sgd" else f"{name} + Mixup"
    return f"Bootstrap + {name}" if bootstrapped(run) else name


def _setting(run: dict[str, Any]) -> CellSetting:
    rho = run["summary"].get("rho") if run["summary"]["optim"] == "sam" else None
    return rho, shard_m(run), mixup_alpha(run)


def _setting_text(setting: CellSetting, show_m: bool = True) -> str:
    """ "rho=0.1, m=32, alpha=8": what sets a cell apart (m only when ``show_m``)."""
    rho, m, alpha = setting
    parts = [] if rho is None else [f"rho={rho}"]
    parts += [f"m={m_text(m)}"] if show_m else []
    parts += [f"alpha={alpha:g}"] if alpha else []
    return ", ".join(parts)


def _choose(row: str, noise: float, stats: dict[CellSetting, Stats]) -> tuple[CellSetting, bool]:
    """The setting shown in a cell and whether it was chosen on the test set among
    several: the paper's rho for SAM rows where it ran, else the lowest mean error."""
    options = list(stats)
    if len(options) > 1 and "SAM" in row:
        paper_rho = [s for s in options if s[0] == PAPER_TABLE4_RHO.get(noise)]
        options = paper_rho or options
    best = min(options, key=lambda s: (stats[s].mean, _order(s)))
    return best, len(options) > 1


def _order(setting: CellSetting) -> tuple[float, float, float]:
    """Settings by rho, m (None: the batch, last), alpha: numerically."""
    rho, m, alpha = setting
    return (-1.0 if rho is None else rho, math.inf if m is None else m, alpha)


def _row_order(row: str) -> tuple[int, str]:
    return (ROW_ORDER.index(row), "") if row in ROW_ORDER else (len(ROW_ORDER), row)


def _contexts(complete: list[dict]) -> dict[tuple, dict[str, dict[float, list[dict]]]]:
    """context (GROUP_KEYS but label_noise) -> row -> noise -> runs, for the contexts
    that hold a noisy-label run or a Mixup/bootstrap run."""
    found: dict[tuple, dict[str, dict[float, list[dict]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for run in complete:
        fields = dict(zip(GROUP_KEYS, group_key(run), strict=True))
        context = tuple(fields[k] for k in CONTEXT_KEYS)
        found[context][method(run)][float(fields["label_noise"])].append(run)
    return {
        c: rows
        for c, rows in found.items()
        if any(
            noise > 0 or any(map(relabelled, runs))
            for cells in rows.values()
            for noise, runs in cells.items()
        )
    }


def table4_lines(complete: list[dict]) -> list[str]:
    """The Markdown section "Table 4": per context, a row per method and for each noise
    level our cell beside the paper's (error = 100 - its accuracy), then every setting of
    the cells that had several."""
    lines: list[str] = []
    for context, rows in sorted(_contexts(complete).items(), key=lambda kv: str(kv[0])):
        setting = dict(zip(CONTEXT_KEYS, context, strict=True))
        noises = sorted({n for cells in rows.values() for n in cells})
        every = [r for cells in rows.values() for runs in cells.values() for r in runs]
        show_m = len({shard_m(r) for r in every}) > 1  # m only where it varies
        header = ["method"]
        for noise in noises:
            header += [f"noise {noise:g}", "paper"]
        body, choices = [], []
        for row in sorted(rows, key=_row_order):
            line = [row]
            for noise in noises:
                runs = rows[row].get(noise, [])
                text, listed = _cell(row, noise, runs, show_m)
                choices += listed
                line += [text, paper_table4_cell(row, noise, setting)]
            body.append(line)
        title = ", ".join(f"{k} {v}" for k, v in setting.items())
        lines += ["", f"### {title}", "", *_md_table(header, body)]
        if choices:
            lines += [
                "",
                "Every setting of the cells that ran several: * = the lowest mean error "
                "of them, chosen on the test set; SAM shows the paper's rho where it ran:",
                "",
                *_md_table(["method", "noise", "setting", "error"], choices),
            ]
    if not lines:
        return []
    return [
        "",
        "## Table 4: label noise (SGD, Mixup, Bootstrap, SAM)",
        "",
        "Final-epoch test error (%), mean ± 95% interval over seeds (n). paper: Foret et "
        "al. Table 4 (ResNet-32, CIFAR-10, 200 epochs), which reports accuracy: shown as "
        "100 - accuracy, beside matching runs. Mixup = SGD with Mixup; Bootstrap = "
        "retrained from scratch on a finished run's predicted labels. Where a cell ran "
        "several settings (Mixup's alpha in {1, 8, 16, 32}, as the paper picks the best "
        "per noise level), the best is CHOSEN ON THE TEST SET (marked *): like the "
        "best-epoch table, a picture of the best reached, not a held-out result.",
        *lines,
    ]


def _cell(row: str, noise: float, runs: list[dict], show_m: bool) -> tuple[str, list[list[str]]]:
    """A cell's text (its chosen setting) and, when it chose among several, one line per
    setting for the list under the table."""
    if not runs:
        return "-", []
    by_setting: dict[CellSetting, list[dict]] = defaultdict(list)
    for run in runs:
        by_setting[_setting(run)].append(run)
    stats = {s: t_interval(final_errors(r)) for s, r in by_setting.items()}
    chosen, tested = _choose(row, noise, stats)
    text = format_cell(stats[chosen])
    if detail := _setting_text(chosen, show_m):
        text += f" [{detail}]"
    listed = _listed(row, noise, stats, show_m) if len(stats) > 1 else []
    return (text + "*" if tested else text), listed


def _listed(
    row: str, noise: float, stats: dict[CellSetting, Stats], show_m: bool
) -> list[list[str]]:
    return [
        [row, f"{noise:g}", _setting_text(s, show_m) or "-", format_cell(v)]
        for s, v in sorted(stats.items(), key=lambda kv: _order(kv[0]))
    ]
