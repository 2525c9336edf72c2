"""Console entry points: ``sam-train`` (Hydra) and ``sam-report``.

Errors reach the user as one line: a UserError or a bad override exits with
status 2, anything else with 1; ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from sam.errors import UserError

CONFIG_PATH = "pkg://sam.configs"


_failed_jobs: list[str] = []  # multirun jobs that ended with a one-line error


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from sam.train import Diverged, run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    try:
        results = run(cfg, hc.runtime.output_dir, overrides=overrides,
                      choices=dict(hc.runtime.choices), multirun=multirun)
    except (UserError, Diverged) as err:
        if os.environ.get("SAM_FULL_ERROR") == "1":
            raise
        status = 2 if isinstance(err, UserError) else 1
        where = f" [job {hc.job.num}: {' '.join(overrides)}]" if multirun else ""
        print(f"sam-train: error: {_one_line(err)}{where}", file=sys.stderr)
        if not multirun:
            sys.exit(status)
        _failed_jobs.append(" ".join(overrides))  # the other jobs of the sweep go on
        return None
    return results["final"]["test_error"] if results.get("final") else None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text.replace(" Available options", ". Available options")


def train_main() -> None:
    """``sam-train``: run Hydra, turning errors into one line and an exit status."""
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["SAM_FULL_ERROR"] = "1" if full_error else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's printer
    try:
        _train()
        if _failed_jobs:
            print(f"sam-train: {len(_failed_jobs)} job(s) failed: "
                  + "; ".join(_failed_jobs), file=sys.stderr)
            sys.exit(2)
    except (UserError, HydraException, OmegaConfBaseException) as err:
        if full_error:
            raise
        print(f"sam-train: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("sam-train: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if full_error:
            raise
        print(f"sam-train: {type(err).__name__}: {_one_line(err)} "
              "(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


def report_main() -> None:
    """``sam-report DIR...``: tables and plots from results.json files."""
    from sam.report import main

    sys.exit(main())


if __name__ == "__main__":  # python -m sam.cli ... (torchrun -m sam.cli ...)
    train_main()
