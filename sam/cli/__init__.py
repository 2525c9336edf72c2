"""Console entry points, one module each, sharing only :mod:`sam.cli._hydra` (the config
path and the failure guard): ``sam-train`` = :mod:`sam.cli.train` (also ``python -m
sam.cli``), ``sam-report`` = :mod:`sam.cli.report`, ``sam-sharpness`` =
:mod:`sam.cli.sharpness` (also ``python -m sam.cli.sharpness``). Nothing is imported here,
so that ``python -m sam.cli.<name>`` runs its module once."""
