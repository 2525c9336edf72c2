"""``sam-correlate runs=SWEEP``: m-sharpness against the generalization gap over a
population of runs (Kendall's tau, Jiang et al.'s conditional mutual information).

    sam-correlate runs=outputs/fig3_population/<date> [m=[1,4,16,64,256] rho=0.05 ...]
    python -m sam.cli.correlate runs=...          # the same, without the console script

Options: configs/correlate.yaml; the job itself is ``sam.sharpness.correlate_job``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sam.cli._hydra import CONFIG_PATH, JobError, full_error, guarded, read_options


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="correlate")
def _correlate(cfg: DictConfig) -> None:
    from sam.settings.tools import CorrelateOptions
    from sam.sharpness.correlate_job import run_correlate

    try:
        run_correlate(read_options(CorrelateOptions, cfg))
    except Exception as err:
        if full_error():
            raise
        raise JobError(err) from err


def correlate_main() -> None:
    """``sam-correlate runs=SWEEP``: writes correlate.json and correlate.png."""
    guarded("sam-correlate", _correlate)


if __name__ == "__main__":
    correlate_main()
