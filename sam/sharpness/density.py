"""Drawing the Hessian spectral density: Gaussian broadening of the SLQ quadrature nodes
and the log-scale PNG plot.

:func:`sam.sharpness.hessian.slq_density` turns Lanczos runs into nodes ``theta_i`` (Ritz
values) with weights ``tau_i``; here they become the density

    ``phi(t) = sum_i tau_i N(t; theta_i, sigma^2)``

(:func:`gaussian_mixture`, width :func:`default_sigma` unless given), and :func:`plot_density`
writes ``phi`` against ``t``. Imports only torch (and matplotlib when plotting).
"""

import math
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor


def default_sigma(theta: Tensor) -> float:
    """1% of the node range (of the largest |node|, at least 1, when they coincide)."""
    span = float(theta.max() - theta.min())
    return 0.01 * span if span > 0 else 0.01 * max(float(theta.abs().max()), 1.0)


def gaussian_mixture(grid: Tensor, centres: Tensor, weights: Tensor, sigma: float) -> Tensor:
    """``sum_i weights_i N(grid; centres_i, sigma^2)``, evaluated in chunks of the grid."""
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    chunks = [
        (torch.exp(-0.5 * ((g[:, None] - centres[None, :]) / sigma) ** 2) * norm) @ weights
        for g in grid.split(4096)
    ]
    return torch.cat(chunks)


def plot_density(grid: Tensor, density: Tensor, path: str | Path | BinaryIO) -> Any:
    """Write the spectral density ``phi(t)`` against the eigenvalue ``t`` as a PNG, log y-axis,
    to ``path`` (a file name, or an open binary file); returns ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change); densities
    below ``1e-12 * max(density)`` are clipped there so the log scale stays readable.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(path, str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    dens = density.detach().double().cpu()
    floor = max(float(dens.max()) * 1e-12, torch.finfo(torch.float64).tiny)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(grid.detach().double().cpu().numpy(), dens.clamp_min(floor).numpy())
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title("Hessian spectral density (SLQ)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return path
