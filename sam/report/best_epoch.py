"""The best-epoch table of label-noise rows: how far SGD and SAM were from their final
error at their best epoch.

Under label noise a network first fits the clean labels, then memorises the noisy ones, so
its test error goes down and then up again (Arpit et al. 2017; Baek et al., ICLR 2024,
find SAM's gain largest before the loss converges). A run's best-epoch error is
min_e test_error(e) over its history: selected on the evaluation set, so it is a picture
of the dynamics, never a result; the report's main table stays final-epoch.
"""

from __future__ import annotations

from sam.report.rows import Row, runs_by_cell
from sam.report.runs import group_fields
from sam.report.stats import t_interval
from sam.report.tables import _md_table, format_cell, m_text


def best_epoch_error(run: dict) -> float | None:
    """min over the run's history of test_error (%), or None without a history."""
    errors = [h["test_error"] for h in run.get("history") or [] if "test_error" in h]
    return min(errors) if errors else None


def _cell(runs: list[dict]) -> str:
    values = [e for e in map(best_epoch_error, runs) if e is not None]
    return format_cell(t_interval(values)) if values else "-"


def best_epoch_lines(rows: list[Row], complete: list[dict]) -> list[str]:
    """A Markdown section with, for each row whose runs trained on noisy labels, the final
    and the best-epoch error of SGD and of SAM (mean ± 95% interval over seeds)."""
    cells = runs_by_cell(complete)
    body = []
    for row in rows:
        group = group_fields(row.group)
        if not group.get("label_noise"):
            continue
        sgd = cells.get((row.group, "sgd", (None, row.sgd_m)), []) if row.sgd else []
        sam = cells.get((row.group, row.variant or "sam", row.setting), []) \
            if row.setting else []  # a SAM variant's row: its own cell
        rho = "-" if row.setting is None else str(row.setting[0])
        rho += f" ({row.variant})" if row.variant not in (None, "sam") else ""
        m = m_text(row.sgd_m if row.setting is None else row.setting[1], row.batch_sizes)
        body.append([group["dataset"], group["model"], group["label_noise"], group["epochs"],
                     rho, m, format_cell(row.sgd), _cell(sgd), format_cell(row.sam),
                     _cell(sam)])
    if not body:
        return []
    header = ["dataset", "model", "label_noise", "epochs", "rho", "m", "SGD final",
              "SGD best epoch", "SAM final", "SAM best epoch"]
    return ["", "## Label noise: final and best-epoch error", "",
             "Best epoch = the lowest test error over a run's epochs, chosen on the evaluation "
             "set itself: it shows how much each optimizer memorised the noisy labels late in "
             "training, it is not a result. The main table is final-epoch.", "",
             *_md_table(header, body)]
