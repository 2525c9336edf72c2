"""``sam-sharpness run_dir=DIR``: Hessian spectrum and m-sharpness of a trained run.

    sam-sharpness run_dir=outputs/<date>/<time> [images=1000 k=5 iters=50 ...]
    python -m sam.cli.sharpness run_dir=...       # the same, without the console script

Options: configs/sharpness.yaml; the measurement itself is ``sam.sharpness.run_sharpness``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sam.cli._hydra import CONFIG_PATH, JobError, full_error, guarded


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sharpness")
def _sharpness(cfg: DictConfig) -> None:
    from sam.sharpness import run_sharpness

    try:
        run_sharpness(cfg)
    except Exception as err:
        if full_error():
            raise
        raise JobError(err) from err


def sharpness_main() -> None:
    """``sam-sharpness run_dir=DIR``: writes sharpness.json and hessian_density.png."""
    guarded("sam-sharpness", _sharpness)


if __name__ == "__main__":
    sharpness_main()
