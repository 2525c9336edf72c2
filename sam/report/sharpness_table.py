"""Sharpness beside the errors: the Hessian measures a run logged at its final epoch
(``sharpness.every`` > 0; :mod:`sam.sharpness.measurement`).

``sharpness_lines``: for each table row and each optimizer, lambda_max (the largest Hessian
eigenvalue of the training loss on the run's fixed training subset), lambda_max / lambda_5
and the trace, as mean ± 95% interval over the seeds that logged them at their last epoch.
``plot_sharpness``: sharpness.png, final test error against lambda_max, one point per run.
"""

from __future__ import annotations

from pathlib import Path

from sam.report.plots import _new_figure, _save_png
from sam.report.rows import Row, group_order, runs_by_cell
from sam.report.runs import _final_test_error, group_fields
from sam.report.stats import t_interval
from sam.report.tables import _md_table, format_cell, m_text

MEASURES = (("sharpness_lambda_max", "lambda_max"),
            ("sharpness_lambda_ratio", "lambda_max/lambda_5"),
            ("sharpness_trace", "trace"))


def final_sharpness(run: dict, key: str) -> float | None:
    """``key`` of the run's last epoch, if that epoch was measured, else None."""
    history = run.get("history") or []
    value = history[-1].get(key) if history else None
    return float(value) if isinstance(value, int | float) else None


def _cell(runs: list[dict], key: str) -> str:
    values = [v for v in (final_sharpness(r, key) for r in runs) if v is not None]
    return format_cell(t_interval(values)) if values else "-"


def sharpness_lines(rows: list[Row], complete: list[dict]) -> list[str]:
    """A Markdown section: for each row with a run measured at its final epoch, SGD's and
    SAM's lambda_max, lambda_max/lambda_5 and trace; [] when no run logged sharpness."""
    cells = runs_by_cell(complete)
    body = []
    for row in rows:
        sgd = cells.get((row.group, "sgd", (None, row.sgd_m)), []) if row.sgd else []
        sam = cells.get((row.group, row.variant or "sam", row.setting), []) \
            if row.setting else []  # a SAM variant's row: its own cell
        if not any(final_sharpness(r, MEASURES[0][0]) is not None for r in sgd + sam):
            continue
        group = group_fields(row.group)
        rho = "-" if row.setting is None else str(row.setting[0])
        rho += f" ({row.variant})" if row.variant not in (None, "sam") else ""
        m = m_text(row.sgd_m if row.setting is None else row.setting[1], row.batch_sizes)
        line = [group["dataset"], group["model"], group.get("label_noise", 0.0),
                group["epochs"], rho, m]
        for key, _ in MEASURES:
            line += [_cell(sgd, key), _cell(sam, key)]
        body.append(line)
    if not body:
        return []
    header = ["dataset", "model", "label_noise", "epochs", "rho", "m"]
    for _, name in MEASURES:
        header += [f"SGD {name}", f"SAM {name}"]
    return ["", "## Sharpness at the final epoch", "",
            "Hessian of the training loss at the final weights, on each run's fixed training "
            "subset (sharpness.images, un-augmented; eval-mode BatchNorm): lambda_max by "
            "Lanczos, trace by Hutchinson; mean ± 95% interval over the seeds that measured "
            "it (sharpness.every > 0).", "", *_md_table(header, body)]


def plot_sharpness(complete: list[dict], path: Path) -> bool:
    """Write sharpness.png: final test error (%) against final lambda_max, one point per run
    that measured it, one marker style per (group, optimizer); False (nothing written)
    when no run did."""
    points: dict[tuple, list[tuple[float, float]]] = {}
    for (key, optim, setting), runs in runs_by_cell(complete).items():
        for run in runs:
            lam, err = final_sharpness(run, MEASURES[0][0]), _final_test_error(run)
            if lam is not None and err is not None:
                points.setdefault((key, optim, setting), []).append((lam, err))
    if not points:
        return False
    fig, (ax,) = _new_figure(1)
    for (key, optim, setting), xy in sorted(points.items(), key=lambda kv: (
            group_order(kv[0][0]), kv[0][1])):
        group = group_fields(key)
        label = f"{optim.upper() if optim in ('sgd', 'sam') else optim}"
        if setting[0] is not None:
            label += f" rho={setting[0]}"
        label += f", {group['model']}, label noise {group.get('label_noise', 0.0)}"
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=label,
                   marker="o" if optim == "sgd" else "^")
    ax.set_xscale("log")
    ax.set(xlabel="lambda_max of the training-loss Hessian (final weights)",
           ylabel="final test error (%)", title="sharpness vs error, one point per run")
    ax.legend(fontsize="small")
    _save_png(fig, path)
    return True
