"""Sharpness of a network: the instruments of the SAM paper (Foret et al., ICLR 2021) and the
two places that use them.

- :mod:`~sam.sharpness.hessian`: Hessian-vector products, Lanczos, Hutchinson's trace, SLQ and
  the summary (section 4.2); :mod:`~sam.sharpness.density` broadens and plots the SLQ density.
- :mod:`~sam.sharpness.msharpness`: m-sharpness (section 4.1).
- :mod:`~sam.sharpness.measurement`: a fixed training subset, the trainer's per-epoch logging;
  :mod:`~sam.sharpness.spectrum`: the spectrum of chosen epochs in ``spectrum/epoch_<n>.json``.
- :mod:`~sam.sharpness.job`: the ``sam-sharpness`` job on a trained run (:func:`run_sharpness`).

Never imports :mod:`sam.train` (the trainer imports this package).
"""

from sam.sharpness.density import plot_density
from sam.sharpness.hessian import (
    broadened,
    hessian_summary,
    hutchinson_trace,
    hvp_fn,
    lanczos,
    lanczos_tridiag,
    num_params,
    slq_density,
    slq_nodes,
    tridiag_matrix,
)
from sam.sharpness.job import DENSITY_FILE, OUTPUT_FILE, SCHEMA_VERSION, run_sharpness
from sam.sharpness.measurement import (
    check_settings,
    epoch_sharpness,
    fixed_subset,
    measure,
    measured_epoch,
    untouched,
    vector_dtype,
)
from sam.sharpness.msharpness import m_sharpness
from sam.sharpness.spectrum import SPECTRUM_DIR, spectrum_path

__all__ = [
    "DENSITY_FILE",
    "OUTPUT_FILE",
    "SCHEMA_VERSION",
    "SPECTRUM_DIR",
    "broadened",
    "check_settings",
    "epoch_sharpness",
    "fixed_subset",
    "hessian_summary",
    "hutchinson_trace",
    "hvp_fn",
    "lanczos",
    "lanczos_tridiag",
    "m_sharpness",
    "measure",
    "measured_epoch",
    "num_params",
    "plot_density",
    "run_sharpness",
    "slq_density",
    "slq_nodes",
    "spectrum_path",
    "tridiag_matrix",
    "untouched",
    "vector_dtype",
]
