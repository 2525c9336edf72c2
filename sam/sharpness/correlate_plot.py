"""``correlate.png``: Kendall's tau and the conditional mutual information of m-sharpness
and the generalization gap against m (the SAM paper's Figure 3, right, plots the MI).

Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

from typing import Any, BinaryIO


def plot_correlate(by_m: dict[str, dict[str, Any]], mi_size: int, f: BinaryIO) -> None:
    """Two panels against m (log axis): tau and Psi; MI at |S| = ``mi_size`` and at
    |S| = 0. ``by_m``: correlate.json's "by_m"; missing values (null) are not drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ms = [int(m) for m in by_m]
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    series = [
        (left, "Kendall's tau", [s["kendall_tau"] for s in by_m.values()], "o-"),
        (
            left,
            "granulated Kendall Psi",
            [s["granulated_kendall"]["Psi"] for s in by_m.values()],
            "s--",
        ),
        (right, f"conditional MI, min over |S|={mi_size}", [s["mi"] for s in by_m.values()], "o-"),
        (right, "MI, |S|=0", [s["mi_by_size"]["0"] for s in by_m.values()], "s--"),
    ]
    for ax, label, ys, style in series:
        pts = [(m, y) for m, y in zip(ms, ys, strict=True) if y is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    for ax, ylabel in (
        (left, "rank correlation with the gap"),
        (right, "normalized mutual information I / H"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.set_xlabel("m (m-sharpness shard size)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("m-sharpness as a predictor of the generalization gap")
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=120)
