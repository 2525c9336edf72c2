"""The landscape's figures (matplotlib's Agg canvas, no pyplot) and their TensorBoard copies.

- :func:`lines_figure`: loss and error against the step along a direction (or along the
  interpolation), one line per run, on the same axes;
- :func:`plane_figure`: a filled contour of one run's 2-D loss grid, with the colour scale
  given (:func:`shared_levels`: the same levels for every run compared);
- :func:`surface_figure`: the same grid as a 3-D surface;
- :func:`save_png` writes a figure atomically; :func:`log_images` adds figures to a run's
  ``tensorboard/`` as images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam.results import atomic_write

Curve = tuple[Sequence[float], Sequence[float], Sequence[float | None]]  # (x, loss, error)


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None or not math.isfinite(v) else v for v in values],
                    dtype=float)


def lines_figure(curves: Mapping[str, Curve], xlabel: str, title: str,
                 marks: Sequence[float] = ()) -> Any:
    """Two panels, loss and error (%) against ``x``, one line per ``label -> curve``;
    dotted vertical lines at ``marks`` (the runs' own weights)."""
    fig = _figure((10.0, 4.0))
    loss_ax, err_ax = fig.subplots(1, 2)
    for label, (x, loss, error) in curves.items():
        loss_ax.plot(x, _finite(loss), label=label, lw=1.6)
        if any(e is not None for e in error):
            err_ax.plot(x, 100 * _finite(error), label=label, lw=1.6)
    for ax, name in ((loss_ax, "loss"), (err_ax, "error (%)")):
        for m in marks:
            ax.axvline(m, color="0.6", ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def shared_levels(grids: Sequence[Sequence[Sequence[float]]], levels: int,
                  vmax: float | None = None, log: bool = True) -> np.ndarray:
    """``levels`` contour levels from the smallest finite loss of all ``grids`` to ``vmax``
    (default: the largest finite loss), one colour scale for every run compared; spaced
    geometrically when ``log`` and the smallest loss is positive (a loss rising by orders of
    magnitude at the edge would leave the basin one colour), else evenly."""
    values = np.concatenate([_finite([v for row in g for v in row]) for g in grids])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.linspace(0.0, 1.0, max(levels, 2))
    lo = float(values.min())
    hi = float(values.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    if log and lo > 0:
        return np.geomspace(lo, hi, max(levels, 2))
    return np.linspace(lo, hi, max(levels, 2))


def _norm(levels: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm, Normalize

    geometric = levels[0] > 0 and np.allclose(levels, np.geomspace(levels[0], levels[-1],
                                                                     len(levels)))
    return (LogNorm if geometric and levels[-1] > 2 * levels[0] else Normalize)(
        levels[0], levels[-1])


def plane_figure(alphas: Sequence[float], betas: Sequence[float],
                 loss: Sequence[Sequence[float]], title: str, levels: np.ndarray) -> Any:
    """Filled contour of ``loss[i][j]`` at ``(alphas[i], betas[j])`` with the given levels
    (values above the top level drawn in its colour), the run's weights marked at (0, 0)."""
    fig = _figure((5.2, 4.4))
    ax = fig.subplots()
    z = np.clip(np.array([_finite(r) for r in loss]).T, None, levels[-1])  # z[j, i]: b, a
    filled = ax.contourf(alphas, betas, z, levels=levels, cmap="viridis", norm=_norm(levels))
    ax.contour(alphas, betas, z, levels=levels[::3], colors="white", linewidths=0.4,
               alpha=0.6)
    ax.plot([0], [0], marker="*", color="red", ms=9, ls="")
    fig.colorbar(filled, ax=ax, label="loss", format="%.3g")
    ax.set_xlabel("a (direction 1)")
    ax.set_ylabel("b (direction 2)")
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(title, fontsize=10)
    return fig


def surface_figure(alphas: Sequence[float], betas: Sequence[float],
                   loss: Sequence[Sequence[float]], title: str, levels: np.ndarray) -> Any:
    """3-D surface of the same grid, coloured and clipped on the shared scale."""
    fig = _figure((5.6, 4.6))
    ax = fig.add_subplot(projection="3d")
    a, b = np.meshgrid(alphas, betas)
    z = np.clip(np.array([_finite(r) for r in loss]).T, None, levels[-1])
    ax.plot_surface(a, b, z, cmap="viridis", norm=_norm(levels), linewidth=0,
                    antialiased=True)
    ax.set_zlim(levels[0], levels[-1])
    ax.set_xlabel("a")
    ax.set_ylabel("b")
    ax.set_zlabel("loss")
    ax.set_title(title, fontsize=10)
    return fig


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG (atomically: no half-written file)."""
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"), binary=True)


def image(fig: Any) -> np.ndarray:
    """The figure rendered as an ``(H, W, 3)`` uint8 RGB array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def log_images(tb_dir: Path, figures: Mapping[str, Any], step: int) -> None:
    """Add each ``tag -> figure`` to the TensorBoard event files in ``tb_dir`` at ``step``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    try:
        for tag, fig in figures.items():
            writer.add_image(tag, image(fig), step, dataformats="HWC")
    finally:
        writer.close()
