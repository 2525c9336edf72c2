"""Pictures of flatness: the loss landscape around trained networks (Li et al., NeurIPS 2018).

- :mod:`~sam.landscape.directions`: filter-normalized random directions (zero on biases and
  BatchNorm parameters);
- :mod:`~sam.landscape.surface`: loss and error along a line, on a plane, and along the
  straight line between two networks (eval mode, batched on the device);
- :mod:`~sam.landscape.plots`: the PNGs and their TensorBoard copies;
- :mod:`~sam.landscape.runs` and :mod:`~sam.landscape.job`: the ``sam-landscape`` job
  (:func:`run_landscape`).

Imports the data, models and the sharpness package's fixed training subset; never the trainer.
"""

from sam.landscape.directions import (
    filter_normalize,
    fixed_parameters,
    random_direction,
    random_directions,
    trainable,
)
from sam.landscape.job import OUTPUT_FILE, SCHEMA_VERSION, draw, run_landscape
from sam.landscape.surface import evaluate, interpolation, line, plane, same_architecture

__all__ = [
    "OUTPUT_FILE",
    "SCHEMA_VERSION",
    "draw",
    "evaluate",
    "filter_normalize",
    "fixed_parameters",
    "interpolation",
    "line",
    "plane",
    "random_direction",
    "random_directions",
    "run_landscape",
    "same_architecture",
    "trainable",
]
