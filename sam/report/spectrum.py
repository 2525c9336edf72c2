"""The Hessian spectrum during training, SGD beside SAM: the SAM paper's Figure 3 (left).

Runs trained with ``sharpness.slq_runs > 0`` hold ``spectrum/epoch_<n>.json`` beside their
results.json, one file per measured epoch (written by :mod:`sam.sharpness.spectrum`; read
here with plain JSON, the report imports nothing of the trainer's side).

``spectrum_lines``: per group (dataset, model, ...) a table with, for each measured epoch and
each optimizer cell (SGD, SAM at its rho and m), lambda_max and lambda_max / lambda_5 as mean
± 95% interval over the seeds, beside the paper's Figure 3 values for a WRN-40-10 without
BatchNorm on CIFAR-10 (:data:`sam.report.paper.PAPER_FIGURE3`).
``plot_spectrum``: spectrum.png, a column per optimizer cell and a row per epoch, the SLQ
density (log scale) against the eigenvalue for each seed, lambda_max and lambda_max /
lambda_5 (mean over seeds) printed on each panel, as the paper's figure.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from sam.report.paper import PAPER_FIGURE3, is_figure3_setting
from sam.report.plots import _save_png
from sam.report.rows import group_order, runs_by_cell
from sam.report.runs import group_fields
from sam.report.stats import t_interval
from sam.report.tables import _md_table

SPECTRUM_DIR = "spectrum"  # sam.sharpness.spectrum.SPECTRUM_DIR, the files' folder
_FILE = re.compile(r"epoch_(\d+)\.json")

Cell = tuple[Any, ...]  # (group key, optim, setting), as sam.report.rows.runs_by_cell


def run_spectra(run: dict) -> dict[int, dict]:
    """The spectrum files of a run (``path``: its results.json): epoch -> document; files
    that do not parse, or lack a lambda_max, are left out."""
    folder = Path(run["path"]).parent / SPECTRUM_DIR
    out = {}
    for path in sorted(folder.glob("epoch_*.json")) if folder.is_dir() else []:
        match = _FILE.fullmatch(path.name)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if match and isinstance(doc, dict) and isinstance(doc.get("lambda_max"), int | float):
            out[int(match.group(1))] = doc
    return out


def spectra_by_cell(complete: list[dict]) -> dict[Cell, dict[int, list[dict]]]:
    """Cells (groups in order, SGD first) whose runs carry spectra: epoch -> one document
    per run (seed)."""
    cells: dict[Cell, dict[int, list[dict]]] = {}
    ordered = sorted(
        runs_by_cell(complete).items(),
        key=lambda kv: (group_order(kv[0][0]), kv[0][1] != "sgd", str(kv[0][2])),
    )
    for cell, runs in ordered:
        epochs: dict[int, list[dict]] = defaultdict(list)
        for run in runs:
            for epoch, doc in run_spectra(run).items():
                epochs[epoch].append(doc)
        if epochs:
            cells[cell] = dict(sorted(epochs.items()))
    return cells


def cell_label(cell: Cell) -> str:
    """ "SGD", "SAM rho=0.05", "SAM rho=0.05 m=32", "gsam rho=0.05"."""
    _, optim, (rho, m) = cell
    if optim == "sgd":
        label = "SGD"
    else:
        label = f"{'SAM' if optim == 'sam' else optim} rho={rho}"
    return label + (f" m={m}" if m is not None else "")


def _stat(docs: list[dict], key: str) -> str:
    values = [float(d[key]) for d in docs if isinstance(d.get(key), int | float)]
    if not values:
        return "-"
    s = t_interval(values)
    half = f" ± {s.half_width:.3g}" if s.half_width is not None else ""
    return f"{s.mean:.3g}{half} (n={s.n})"


def _paper(cell: Cell, runs: dict[Cell, list[dict]], epoch: int, index: int) -> str:
    """The paper's Figure 3 value (0: lambda_max, 1: the ratio) when the cell's runs are its
    setting (CIFAR-10, WRN-40-10 without normalization) and the epoch is one of its panels."""
    group, optim, _ = cell
    dataset = group_fields(group)["dataset"]
    if optim not in PAPER_FIGURE3 or not all(
        is_figure3_setting(dataset, (r.get("config") or {}).get("model")) for r in runs[cell]
    ):
        return "-"
    value = PAPER_FIGURE3[optim].get(epoch)
    return "-" if value is None else f"{value[index]}"


def _network_text(runs: list[dict]) -> str:
    """ " (WideResNet-10-2, norm none)" when the runs' model configs say so (a WRN group
    option rebuilt at another depth/width), else ""."""
    texts = set()
    for run in runs:
        model = (run.get("config") or {}).get("model") or {}
        if str(model.get("_target_", "")).endswith("WideResNet"):
            texts.add(
                f" (WideResNet-{model.get('depth')}-{model.get('widen_factor')}, "
                f"norm {model.get('norm', 'batchnorm')})"
            )
    return texts.pop() if len(texts) == 1 else ""


def spectrum_lines(complete: list[dict]) -> list[str]:
    """A Markdown section: per group, lambda_max and lambda_max / lambda_5 per measured
    epoch and optimizer cell beside the paper's Figure 3; [] when no run has spectra."""
    cells = spectra_by_cell(complete)
    if not cells:
        return []
    runs = runs_by_cell(complete)
    lines = [
        "",
        "## Hessian spectrum during training (Figure 3, left)",
        "",
        "Each measured epoch's training-loss Hessian on the run's fixed training subset "
        "(sharpness.images, un-augmented, eval mode): lambda_max and lambda_max / "
        "lambda_5 by Lanczos (sharpness.iters steps), mean ± 95% interval over the seeds; "
        "the SLQ density is in spectrum.png. Paper: Foret et al. 2021, Figure 3 left "
        "(WideResNet-40-10 without BatchNorm, CIFAR-10; shown only beside such runs).",
    ]
    by_group: dict[Any, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_group[cell[0]].append(cell)
    for group, group_cells in by_group.items():
        g = group_fields(group)
        net = _network_text([r for c in group_cells for r in runs[c]])
        lines += [
            "",
            f"{g['dataset']}, {g['model']}{net}, {g['augment']}, {g['epochs']} epochs:",
            "",
        ]
        header = ["epoch"]
        for cell in group_cells:
            name = cell_label(cell)
            header += [f"{name} lambda_max", "paper", f"{name} lambda_max/lambda_5", "paper"]
        epochs = sorted({e for cell in group_cells for e in cells[cell]})
        body = []
        for epoch in epochs:
            row: list[Any] = [epoch]
            for cell in group_cells:
                docs = cells[cell].get(epoch, [])
                row += [
                    _stat(docs, "lambda_max"),
                    _paper(cell, runs, epoch, 0),
                    _stat(docs, "lambda_ratio"),
                    _paper(cell, runs, epoch, 1),
                ]
            body.append(row)
        lines += _md_table(header, body)
    return lines


def plot_spectrum(complete: list[dict], path: Path) -> bool:
    """Write spectrum.png (a column per optimizer cell, a row per measured epoch: the SLQ
    density of each seed on a log scale, lambda_max and lambda_max / lambda_5 on the panel);
    False (nothing written) when no run has spectra."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = spectra_by_cell(complete)
    if not cells:
        return False
    epochs = sorted({e for by_epoch in cells.values() for e in by_epoch})
    columns = list(cells)
    fig = Figure(figsize=(4.2 * len(columns), 2.8 * len(epochs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(epochs), len(columns), squeeze=False)
    several_groups = len({c[0] for c in columns}) > 1
    for j, cell in enumerate(columns):
        title = cell_label(cell)
        if several_groups:
            title += f", {group_fields(cell[0])['model']}"
        for i, epoch in enumerate(epochs):
            _panel(axes[i][j], cells[cell].get(epoch, []), f"{title}, epoch {epoch}")
            if i == len(epochs) - 1:
                axes[i][j].set_xlabel("eigenvalue")
            if j == 0:
                axes[i][j].set_ylabel("density (log)")
    _save_png(fig, path)
    return True


def _panel(ax: Any, docs: list[dict], title: str) -> None:
    """One panel: each document's broadened SLQ density, and the mean lambda_max and ratio."""
    ax.set_title(title, fontsize="medium")
    densities = [d["slq"] for d in docs if isinstance(d.get("slq"), dict)]
    if not docs:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    for slq in densities:
        peak = max(slq["density"]) if slq["density"] else 0.0
        floor = peak * 1e-8
        ax.plot(slq["grid"], [max(v, floor) for v in slq["density"]], lw=1)
    ax.set_yscale("log")
    lam = [float(d["lambda_max"]) for d in docs]
    ratios = [
        float(d["lambda_ratio"]) for d in docs if isinstance(d.get("lambda_ratio"), int | float)
    ]
    text = f"lambda_max = {sum(lam) / len(lam):.3g}"
    if ratios:
        text += f"\nlambda_max/lambda_5 = {sum(ratios) / len(ratios):.3g}"
    if len(docs) > 1:
        text += f"\n(mean of {len(docs)} seeds)"
    ax.text(
        0.97,
        0.95,
        text,
        ha="right",
        va="top",
        transform=ax.transAxes,
        fontsize="small",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
    )
