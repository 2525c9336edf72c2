"""What every console entry point shares: where the configs are, one failure guard, and
one way to name the runs a tool reads (``runs=``).

Errors reach the user as one line: a UserError, a bad override or an unwritable output
directory exits with status 2, anything else with 1; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam.errors import UserError

# configs/ of a source checkout (also what an editable install sees); an installed
# wheel carries the same files as the package sam.configs
_SOURCE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG_PATH = (str(_SOURCE_CONFIGS) if (_SOURCE_CONFIGS / "train.yaml").is_file()
               and (_SOURCE_CONFIGS / "optim" / "sam.yaml").is_file() else "pkg://sam.configs")


def read_options(cls: type, cfg: DictConfig) -> Any:
    """A tool's options (``sam.settings.tools``) from its composed config: read once, here."""
    from sam.settings.fields import read

    return read(cls, OmegaConf.to_container(cfg, resolve=True), "")


def full_error() -> bool:
    """Whether the user asked for tracebacks (``guarded`` keeps the answer in SAM_FULL_ERROR,
    since it sets HYDRA_FULL_ERROR itself)."""
    return os.environ.get("SAM_FULL_ERROR") == "1"


def one_line(err: BaseException) -> str:
    """The error's text on one line (Hydra's messages span several)."""
    text = " ".join(str(err).split())
    return text.replace(" Available options", ". Available options")


# Every console script names the runs it reads with runs= (a run directory, or a list of
# them where the tool compares several); sam-sharpness once spelled it run_dir=.
RUNS = "runs="
OLD_RUNS = "run_dir="


def accept_old_runs_spelling(prog: str) -> None:
    """Rewrite ``run_dir=X`` in sys.argv to ``runs=X`` before Hydra composes (the job reads
    one key), with a one-line hint on stderr; UserError when both spellings are given."""
    args = sys.argv[1:]
    if not any(a.startswith(OLD_RUNS) for a in args):
        return
    if any(a.startswith(RUNS) for a in args):
        raise UserError(f"both {OLD_RUNS} and {RUNS} given: give {RUNS} only "
                        f"({OLD_RUNS} is its old spelling)")
    new = [RUNS + a[len(OLD_RUNS):] if a.startswith(OLD_RUNS) else a for a in args]
    for a in new:
        if a.startswith(RUNS):
            print(f"{prog}: {OLD_RUNS} is now {RUNS}; using {a}", file=sys.stderr)
    sys.argv[1:] = new


def one_run(prog: str, runs: Any) -> Any:
    """The one run ``runs=`` names, for a tool that reads one (a list of one is that run);
    UserError for a list of several."""
    if not isinstance(runs, ListConfig | list | tuple):
        return runs
    if len(runs) != 1:
        raise UserError(f"runs=[{','.join(map(str, runs))}] names {len(runs)} runs: {prog} "
                        "reads one, run it once per runs=<run directory>")
    return runs[0]


def runs_as_arguments(prog: str, argv: list[str]) -> list[str]:
    """``argv`` with ``runs=X`` / ``runs=[X,Y]`` (or ``run_dir=X``) turned into the
    directories themselves, for a tool that takes them as arguments (sam-report), with a
    one-line hint on stderr; an existing path that merely starts so is left alone."""
    out: list[str] = []
    for arg in argv:
        key = next((k for k in (RUNS, OLD_RUNS) if arg.startswith(k)), None)
        if key is None or Path(arg).exists():
            out.append(arg)
            continue
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            value = OverridesParser.create().parse_override(arg).value()
        except HydraException as err:
            raise UserError(f"{arg}: {one_line(err)}: give directories, e.g. "
                            f"{prog} outputs/multirun/<date>/<time>") from err
        dirs = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        print(f"{prog}: takes the directories as arguments, not {key}; using {' '.join(dirs)}",
              file=sys.stderr)
        out += dirs
    return out


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
