"""The Hessian spectrum of a training run at chosen epochs, one JSON file per epoch.

The SAM paper's Figure 3 (left) shows the spectral density of the training-loss Hessian
at epochs 1, 50 and 300 with lambda_max and lambda_max / lambda_5 on each panel. With
``sharpness.slq_runs > 0`` the trainer's per-epoch measurement
(:func:`sam.sharpness.measurement.epoch_sharpness`) writes, for each measured epoch n,
``<run dir>/spectrum/epoch_<n>.json`` (atomically; a resumed run that trains epoch n again
rewrites it, the files of earlier epochs stay):

    {"schema_version": 1, "epoch": n, "images": N, "seed": s, "dim": parameters,
     "lambda_max": l1, "lambda_ratio": l1 / l5, "top_k": [l1 .. lk],
     "trace": tr(H), "trace_stderr": its standard error,
     "settings": {"k", "iters", "trace_samples", "dtype", "slq_runs", "slq_iters",
                  "hessian_mode": "eval"},
     "slq": {"nodes": [[theta_i] per run], "weights": [[tau_i] per run],
             "sigma": s, "grid": [t], "density": [phi(t)]}}

``nodes`` / ``weights``: the stochastic Lanczos quadrature of each run
(:func:`sam.sharpness.hessian.slq_nodes`); ``density``: their Gaussian broadening of width
``sigma`` (1% of the node range) on ``grid`` (:func:`sam.sharpness.hessian.broadened`),
which ``sam-report`` draws as spectrum.png (:mod:`sam.report.spectrum`, which reads these
files with its own code: the report imports nothing of the trainer's side). Non-finite
numbers are written as null.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from sam.results import remove_stale_temps, write_json
from sam.sharpness.density import default_sigma
from sam.sharpness.hessian import broadened

SPECTRUM_DIR = "spectrum"
SCHEMA_VERSION = 1
GRID_POINTS = 1000


def spectrum_path(run_dir: str | Path, epoch: int) -> Path:
    """``<run_dir>/spectrum/epoch_<epoch>.json``."""
    return Path(run_dir) / SPECTRUM_DIR / f"epoch_{epoch}.json"


def spectrum_document(
    epoch: int,
    summary: dict[str, Any],
    theta: Tensor,
    tau: Tensor,
    *,
    images: int,
    seed: int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The file's contents (module docstring) from :func:`sam.sharpness.hessian_summary`'s
    dict and the SLQ nodes ``theta`` and weights ``tau`` (shape ``(runs, m)``)."""
    sigma = default_sigma(theta.reshape(-1))
    grid, density = broadened(theta, tau, GRID_POINTS, sigma)
    return {
        "schema_version": SCHEMA_VERSION,
        "epoch": epoch,
        "images": images,
        "seed": seed,
        "dim": summary["dim"],
        "lambda_max": _num(summary["lambda_max"]),
        "lambda_ratio": _num(summary["lambda_ratio"]),
        "top_k": [_num(v) for v in summary["top_k"]],
        "trace": _num(summary["trace"]),
        "trace_stderr": _num(summary["trace_stderr"]),
        "settings": {**settings, "hessian_mode": "eval"},
        "slq": {
            "nodes": theta.tolist(),
            "weights": tau.tolist(),
            "sigma": sigma,
            "grid": grid.tolist(),
            "density": density.tolist(),
        },
    }


def write_spectrum(run_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``spectrum/epoch_<doc["epoch"]>.json`` under ``run_dir`` atomically
    (the temporary files of a write a kill interrupted are removed first); returns the path."""
    path = spectrum_path(run_dir, doc["epoch"])
    if path.parent.is_dir():
        remove_stale_temps(path.parent)
    write_json(path, doc)
    return path


def _num(v: float) -> float | None:
    """JSON-safe float: NaN / inf -> null."""
    v = float(v)
    return v if math.isfinite(v) else None
