"""``sam-sharpness runs=DIR``: Hessian spectrum and m-sharpness of a trained run.

    sam-sharpness runs=outputs/<date>/<time> [images=1000 k=5 iters=50 ...]
    python -m sam.cli.sharpness runs=...          # the same, without the console script

``run_dir=DIR``, the old spelling, still works (a one-line hint says so).

Options: configs/sharpness.yaml; the measurement itself is ``sam.sharpness.run_sharpness``.
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
    one_run,
    read_options,
)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sharpness")
def _sharpness(cfg: DictConfig) -> None:
    from sam.settings.tools import SharpnessOptions
    from sam.sharpness import run_sharpness

    try:
        cfg.runs = one_run("sam-sharpness", cfg.runs)
        run_sharpness(read_options(SharpnessOptions, cfg))
    except Exception as err:
        if full_error():
            raise
        raise JobError(err) from err


def _main() -> None:
    accept_old_runs_spelling("sam-sharpness")
    _sharpness()


def sharpness_main() -> None:
    """``sam-sharpness runs=DIR``: writes sharpness.json and hessian_density.png."""
    guarded("sam-sharpness", _main)


if __name__ == "__main__":
    sharpness_main()
