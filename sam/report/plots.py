"""The report's figures: msharpness.png and curves.png (matplotlib, Agg, no pyplot).

``msharpness.png``: final test error vs rho, one line per m (mean ± 95% t half-width over
seeds; lines shifted a little along rho so the bars stand apart; the legend gives each m's
error at its best rho), one dashed SGD line per SGD BatchNorm shard size with its interval
shaded; only for groups whose SAM runs span at least 2 values of rho. ``curves.png``: test
error vs epoch from ``history``, mean over seeds, one line per cell; only when some run has
a history.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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
from sam.report.stats import Stats, t_interval
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


DODGE = 0.015  # shift between neighbouring m lines, as a fraction of the rho axis


@dataclass(frozen=True)
class MLine:
    """One m's line of msharpness.png: SAM's final test error at each rho (ascending), the
    mean and 95% t half-width over seeds (``Stats``) per rho."""

    m: int | None  # None: m = batch size (plain SAM)
    rhos: tuple[float, ...]
    stats: tuple[Stats, ...]

    @property
    def best(self) -> tuple[float, Stats]:
        """(rho, stats) at the rho of lowest mean error: the line's value at its best rho."""
        i = min(range(len(self.rhos)), key=lambda k: self.stats[k].mean)
        return self.rhos[i], self.stats[i]


def msharpness_lines(runs: list[dict]) -> list[MLine]:
    """The plain-SAM runs of one group (variants left out) as one ``MLine`` per m, m
    ascending and m = batch size last."""
    by_m: dict[int | None, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if variant(run) == "sam":
            rho, m = sam_setting(run)
            by_m[m][rho].append(run)
    lines = []
    for m in sorted(by_m, key=lambda v: math.inf if v is None else v):
        rhos = tuple(sorted(by_m[m]))
        lines.append(MLine(m, rhos, tuple(t_interval(final_errors(by_m[m][r])) for r in rhos)))
    return lines


def dodged(rhos: Sequence[float], offset: float, lo: float, hi: float, log: bool) -> list[float]:
    """x positions of a line ``offset`` places from the centre, so that the error bars of
    the m lines at one rho stand apart: rho + offset * DODGE * (hi - lo) on a linear axis,
    rho * (hi / lo) ** (offset * DODGE) on a log axis (lo, hi: the axis' rho range)."""
    if log:
        return [r * (hi / lo) ** (offset * DODGE) for r in rhos]
    return [r + offset * DODGE * (hi - lo) for r in rhos]


def _interval_text(stats: Stats) -> str:
    half = "" if stats.half_width is None else f" ± {stats.half_width:.2f}"
    return f"{stats.mean:.2f}{half} (n={stats.n})"


def _msharpness_axes(key: GroupKey, runs: list[dict], ax: Any) -> None:
    """Test error vs rho for one group: one line per m (mean ± t half-width; the legend
    gives each m's value at its best rho), SGD dashed with its interval shaded."""
    lines = msharpness_lines(runs)
    all_rhos = sorted({rho for line in lines for rho in line.rhos})
    lo, hi = all_rhos[0], all_rhos[-1]
    log = lo > 0 and hi / lo >= 10
    for i, line in enumerate(lines):
        runs_m = [r for r in runs if variant(r) == "sam" and sam_setting(r)[1] == line.m]
        rho, best = line.best
        label = (
            f"{_m_label(line.m, batch_sizes_of(runs_m))}: best {_interval_text(best)} "
            f"at rho {rho:g}"
        )
        x = dodged(line.rhos, i - (len(lines) - 1) / 2, lo, hi, log)
        ax.errorbar(
            x,
            [s.mean for s in line.stats],
            yerr=[s.half_width or 0.0 for s in line.stats],
            marker="o",
            capsize=3,
            label=label,
        )
    styles = itertools.cycle(("--", ":", "-."))
    for (m, sgd_runs), style in zip(sgd_runs_by_m(runs).items(), styles, strict=False):
        sgd = t_interval(final_errors(sgd_runs))  # one line per SGD BatchNorm shard size
        name = "SGD" + ("" if m is None else f" m = {m}")
        ax.axhline(sgd.mean, color="k", linestyle=style, label=f"{name}: {_interval_text(sgd)}")
        if sgd.half_width is not None:
            ax.axhspan(
                sgd.mean - sgd.half_width,
                sgd.mean + sgd.half_width,
                color="k",
                alpha=0.08,
                linewidth=0,
            )
    if log:
        ax.set_xscale("log")
    ax.set(
        title="/".join(map(str, key)),
        xlabel="rho",
        ylabel="final test error (%), mean ± 95% t-interval",
    )
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
