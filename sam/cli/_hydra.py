"""What every console entry point shares: where the configs are, and one failure guard.

Errors reach the user as one line: a UserError, a bad override or an unwritable output
directory exits with status 2, anything else with 1; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from sam.errors import UserError

# configs/ of a source checkout (also what an editable install sees); an installed
# wheel carries the same files as the package sam.configs
_SOURCE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG_PATH = (str(_SOURCE_CONFIGS) if (_SOURCE_CONFIGS / "train.yaml").is_file()
               and (_SOURCE_CONFIGS / "optim" / "sam.yaml").is_file() else "pkg://sam.configs")


def full_error() -> bool:
    """Whether the user asked for tracebacks (``guarded`` keeps the answer in SAM_FULL_ERROR,
    since it sets HYDRA_FULL_ERROR itself)."""
    return os.environ.get("SAM_FULL_ERROR") == "1"


def one_line(err: BaseException) -> str:
    """The error's text on one line (Hydra's messages span several)."""
    text = " ".join(str(err).split())
    return text.replace(" Available options", ". Available options")


class JobError(BaseException):
    """Carries an error out of a Hydra job past Hydra's 'Error executing job' printer."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def guarded(prog: str, main: Callable[[], object], interrupted: str = "interrupted") -> None:
    """Run a Hydra entry point; UserError and bad overrides -> one line on stderr, exit 2;
    anything else -> one line, exit 1 (``HYDRA_FULL_ERROR=1`` re-raises with the traceback)."""
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["SAM_FULL_ERROR"] = "1" if full else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's printer
    try:
        try:
            main()
        except JobError as job:
            raise job.error from None
    except (UserError, HydraException, OmegaConfBaseException) as err:
        if full:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        sys.exit(130)
    except OSError as err:  # an unwritable output directory, a full disk...
        if full:
            raise
        print(f"{prog}: error: {one_line(err)} (check the output directory and free space)",
              file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if full:
            raise
        print(f"{prog}: {type(err).__name__}: {one_line(err)} "
              "(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
