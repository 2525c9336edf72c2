"""The report's figures: msharpness.png and curves.png (matplotlib, Agg, no pyplot).

``msharpness.png``: final test error vs rho, one line per m (mean ± 95% t half-width over
seeds), one dashed SGD line per SGD BatchNorm shard size; only for groups whose SAM runs
span at least 2 values of rho. ``curves.png``: test error vs epoch from ``history``, mean
over seeds, one line per cell; only when some run has a history.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam.report.rows import (
    batch_sizes_of,
    cell_order,
    group_order,
    runs_by_cell,
    runs_by_group,
    sgd_runs_by_m,
)
from sam.report.runs import GroupKey, Setting, final_errors, sam_setting, variant
from sam.report.stats import t_interval
from sam.results import atomic_write


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


def _curve_label(optim: str, setting: Setting, runs: list[dict]) -> str:
    rho, m = setting
    if optim == "sgd":
        return "SGD" + ("" if m is None else f" m = {m}") + f" (n={len(runs)})"
    name = "SAM" if optim == "sam" else optim  # a variant: its name
    return f"{name} rho={rho} {_m_label(m, batch_sizes_of(runs))} (n={len(runs)})"


# --------------------------------------------------------------------------- m-sharpness


def _msharpness_axes(key: GroupKey, runs: list[dict], ax: Any) -> None:
    """Test error vs rho for one group: one line per m (mean ± t half-width), SGD dashed."""
    sam_runs = [r for r in runs if variant(r) == "sam"]  # plain SAM: not its variants
    by_m: dict[int | None, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in sam_runs:
        rho, m = sam_setting(run)
        by_m[m][rho].append(run)
    for m in sorted(by_m, key=lambda v: math.inf if v is None else v):
        rhos = sorted(by_m[m])
        stats = [t_interval(final_errors(by_m[m][rho])) for rho in rhos]
        yerr = [s.half_width or 0.0 for s in stats]
        label = _m_label(m, batch_sizes_of(r for rho in rhos for r in by_m[m][rho]))
        ax.errorbar(rhos, [s.mean for s in stats], yerr=yerr, marker="o", capsize=3, label=label)
    styles = itertools.cycle(("--", ":", "-."))
    for (m, sgd_runs), style in zip(sgd_runs_by_m(runs).items(), styles, strict=False):
        sgd = t_interval(final_errors(sgd_runs))  # one line per SGD BatchNorm shard size
        ax.axhline(sgd.mean, color="k", linestyle=style,
                   label=_curve_label("sgd", (None, m), sgd_runs))
    all_rhos = sorted({sam_setting(r)[0] for r in sam_runs})
    if all_rhos[0] > 0 and all_rhos[-1] / all_rhos[0] >= 10:
        ax.set_xscale("log")
    ax.set(title="/".join(map(str, key)), xlabel="rho", ylabel="final test error (%)")
    ax.legend(fontsize="small")


def _rho_count(runs: list[dict]) -> int:
    return len({sam_setting(r)[0] for r in runs if variant(r) == "sam"})


def plot_msharpness(complete: list[dict], path: Path) -> bool:
    """Write msharpness.png for groups whose SAM runs span >= 2 rho values; False if none."""
    groups = {k: v for k, v in runs_by_group(complete).items() if _rho_count(v) >= 2}
    if not groups:
        return False
    fig, axes = _new_figure(len(groups))
    for ax, (key, runs) in zip(axes, groups.items(), strict=True):
        _msharpness_axes(key, runs, ax)
    _save_png(fig, path)
    return True


# --------------------------------------------------------------------------- curves


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


def plot_curves(complete: list[dict], path: Path) -> bool:
    """Write curves.png: test error vs epoch, one line per (optim, rho, m) per group, mean over
    seeds. Returns False (and writes nothing) when no run has a history."""
    from matplotlib.ticker import MaxNLocator

    curves: dict[GroupKey, list[tuple[str, list[int], list[float]]]] = defaultdict(list)
    cells = sorted(runs_by_cell(complete).items(), key=lambda kv: cell_order(kv[0][2]))
    for (key, optim, setting), runs in cells:
        epochs, errors = _history_curve(runs)
        if epochs:
            curves[key].append((_curve_label(optim, setting, runs), epochs, errors))
    if not curves:
        return False
    groups = sorted(curves.items(), key=lambda kv: group_order(kv[0]))
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
