"""The report's text: the Markdown tables (test errors, SGD at twice the epochs, runs not
tabulated) and report.csv.

Columns: the group (GROUP_KEYS, fidelity included), rho, m, the precision(s) the row's
runs trained in ("bf16, fp32" when they differ), then the cells. A cell reads
``x_bar ± h (n=k)`` (mean and 95% t half-width over k seeds, see :mod:`sam.report.stats`),
or ``x_bar (n=1)`` for a single seed. ``m`` reads ``B`` (or ``B=128`` when the batch size
is known) for m-sharpness over the whole batch. Group keys are read by name
(``group_fields``), so another key needs no change here. When a SAM variant is among the
runs (docs/variants.md) the table also has a ``variant`` column before rho and, at the
end, the cost: each cell's mean images/s and the SAM cell's time per image over SGD's.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from sam.report.paper import paper_mean
from sam.report.rows import Row
from sam.report.runs import GROUP_KEYS, group_fields, group_value, with_fields
from sam.report.stats import Stats

TABLE_HEADER = [
    *GROUP_KEYS,
    "rho",
    "m",
    "precision",
    "SGD",
    "paper SGD",
    "SAM",
    "paper SAM",
    "SAM - SGD",
]
VARIANT_COLUMN = "variant"  # before "rho", when variants are compared
COST_COLUMNS = ["SGD img/s", "SAM img/s", "SAM/SGD time"]  # then at the end

CSV_FIELDS = [
    *GROUP_KEYS,
    "rho",
    "m",
    "batch_size",
    "sgd_m",
    "precision",
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
    "variant",
    "sgd_images_per_sec",
    "sam_images_per_sec",
    "sam_sgd_time_ratio",
]


# --------------------------------------------------------------------------- formatting


def m_text(m: int | None, batch_sizes: Sequence[Any] = ()) -> str:
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


def md_escape(text: Any) -> str:
    """``text`` safe inside one Markdown table cell (or list item): no '|', no newline."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def precision_text(row: Row) -> str:
    """The precisions of a row's runs: "fp32", or "bf16, fp32" when they differ."""
    return ", ".join(row.precisions)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines


# --------------------------------------------------------------------------- Markdown


def compares_variants(rows: list[Row]) -> bool:
    """Whether a row holds a SAM variant other than plain SAM (the variant columns show)."""
    return any(row.variant not in (None, "sam") for row in rows)


def table_header(rows: list[Row]) -> list[str]:
    """TABLE_HEADER, with the variant and cost columns when ``compares_variants``."""
    if not compares_variants(rows):
        return TABLE_HEADER
    at = TABLE_HEADER.index("rho")
    return [*TABLE_HEADER[:at], VARIANT_COLUMN, *TABLE_HEADER[at:], *COST_COLUMNS]


def _ips_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table_lines(rows: list[Row]) -> list[str]:
    """The Markdown table of test errors (%), with the variant and cost columns when
    ``compares_variants``."""
    variants = compares_variants(rows)
    body = []
    for row in rows:
        if row.setting is None:  # SGD only: its m
            rho, m = "-", m_text(row.sgd_m, row.batch_sizes)
        else:
            rho, m = str(row.setting[0]), m_text(row.setting[1], row.batch_sizes)
        sgd = format_cell(row.sgd)
        if row.sgd is not None and row.setting is not None and row.sgd_m != row.setting[1]:
            sgd += f" [m={m_text(row.sgd_m)}]"  # the only SGD runs of the group
        body.append(
            [
                *row.group,
                rho,
                m,
                precision_text(row),
                sgd,
                _paper_text(row.paper, 0),
                format_cell(row.sam),
                _paper_text(row.paper, 1),
                "-" if row.diff is None else f"{row.diff:+.2f}",
            ]
        )
        if variants:
            body[-1].insert(len(row.group), row.variant or "sgd")
            ratio = row.time_ratio
            body[-1] += [_ips_text(row.sgd_ips), _ips_text(row.sam_ips),
                         "-" if ratio is None else f"{ratio:.2f}"]
    return _md_table(table_header(rows), body)


def sgd_budget_lines(rows: list[Row]) -> list[str]:
    """The paper reports, for SGD, the better of E and 2E epochs (section 3.1). For each
    setting with SGD at both budgets: both means, the better one, and SAM(E) minus it."""
    sgd_at = {(row.group, row.sgd_m): row.sgd for row in rows if row.sgd is not None}
    lines = []
    for row in rows:
        epochs = group_fields(row.group)["epochs"]
        longer = sgd_at.get((with_fields(row.group, epochs=2 * epochs), row.sgd_m))
        if row.sgd is None or longer is None:
            continue
        best = min(row.sgd.mean, longer.mean)
        sam_minus = f"{row.sam.mean - best:+.2f}" if row.sam is not None else "-"
        rho, m = ("-", "-") if row.setting is None else \
            (str(row.setting[0]), m_text(row.setting[1], row.batch_sizes))
        if row.variant not in (None, "sam"):
            rho += f" ({row.variant})"
        lines.append([*row.group, format_cell(row.sgd), format_cell(longer), f"{best:.2f}",
                      rho, m, sam_minus])
    if not lines:
        return []
    header = [*("epochs E" if k == "epochs" else k for k in GROUP_KEYS), "SGD E", "SGD 2E",
              "best SGD", "SAM rho", "SAM m", "SAM(E) - best SGD"]
    return ["", "## SGD at twice the epochs", ""] + _md_table(header, lines)


def _setting_text(run: dict[str, Any]) -> str:
    summary = run.get("summary")
    if not isinstance(summary, dict):
        return ""
    text = "/".join(str(group_value(summary, k)) for k in GROUP_KEYS)
    text += f" {summary.get('optim')}"
    if summary.get("optim") == "sam":
        if summary.get("variant") not in (None, "sam"):
            text += f" {summary['variant']}"
        text += f" rho={summary.get('rho')} m={m_text(summary.get('m'))}"
    return text + f" seed={summary.get('seed')}"


def others_lines(others: list[dict]) -> list[str]:
    """The table of runs left out of the statistics: path, status, setting, error."""
    body = [
        [r["path"], r.get("status", "unknown"), _setting_text(r), r.get("error") or ""]
        for r in others
    ]
    return _md_table(["path", "status", "setting", "error"], body)


# --------------------------------------------------------------------------- CSV


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
    lists the batch sizes of the SAM runs of the row (of the SGD runs without SAM);
    ``precision`` the precisions of all its runs, as in the Markdown table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in rows:
        rho, m = row.setting if row.setting else (None, row.sgd_m)
        cells: list[Any] = [*row.group, "" if rho is None else rho]
        cells.append(_csv_m(m, row.batch_sizes))
        cells.append(" ".join(str(b) for b in row.batch_sizes))
        cells.append("" if row.sgd is None else _csv_m(row.sgd_m, row.batch_sizes))
        cells.append(precision_text(row))
        for index, stats in enumerate((row.sgd, row.sam)):
            if stats is None:
                cells += ["", "", "", ""]
            else:
                cells += [stats.n, _num(stats.mean), _num(stats.std), _num(stats.half_width)]
            cells.append("" if row.paper is None else paper_mean(row.paper[index]))
        cells.append(_num(row.diff))
        cells += [row.variant or "", _num(row.sgd_ips), _num(row.sam_ips),
                  _num(row.time_ratio)]
        writer.writerow(cells)
    return buffer.getvalue()
