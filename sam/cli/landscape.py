"""``sam-landscape runs=[DIR,...]``: loss-landscape pictures of trained runs.

    sam-landscape runs=[outputs/<sgd run>,outputs/<sam run>] [images=1000 plane.points=21 ...]
    python -m sam.cli.landscape runs=...           # the same, without the console script

``run_dir=DIR`` (sam-sharpness's old spelling) works too, with a one-line hint.

Options: configs/landscape.yaml; the work itself is ``sam.landscape.run_landscape``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sam.cli._hydra import (
    CONFIG_PATH,
    JobError,
    accept_old_runs_spelling,
    full_error,
    guarded,
    read_options,
)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="landscape")
def _landscape(cfg: DictConfig) -> None:
    from sam.landscape import run_landscape
    from sam.settings.tools import LandscapeOptions

    try:
        run_landscape(read_options(LandscapeOptions, cfg))
    except Exception as err:
        if full_error():
            raise
        raise JobError(err) from err


def _main() -> None:
    accept_old_runs_spelling("sam-landscape")
    _landscape()


def landscape_main() -> None:
    """``sam-landscape runs=...``: writes landscape.json and the landscape PNGs."""
    guarded("sam-landscape", _main)


if __name__ == "__main__":
    landscape_main()
