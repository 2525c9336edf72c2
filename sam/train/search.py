"""An Optuna study over training runs (``sam-search``): ask a trial's values, train its
run directory, tell its validation error; resumable from the study's SQLite file.

The entry point (sam/cli/search.py) composes each trial's config and hands this loop a
function that trains one run; the loop knows nothing of Hydra.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam.errors import UserError
from sam.settings.schema import SearchSettings

log = logging.getLogger("sam.search")

_FINISHED = ("COMPLETE", "FAIL", "PRUNED")

# trains the run of {name: value} in the given directory; returns its results.json dict
TrainTrial = Callable[[dict[str, float], Path], dict]


def check_space(s: SearchSettings) -> None:
    """UserError unless every ``search.params`` entry is {low, high[, log]} with numbers
    low < high, and low > 0 on a log scale."""
    if not s.params:
        raise UserError(
            "search.params is empty: name at least one key, e.g. "
            "search.params.rho={low:0.01,high:0.5,log:true}"
        )
    for name, space in s.params.items():
        space = space or {}
        unknown = set(space) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(space):
            raise UserError(
                f"search.params.{name}={space}: use {{low: L, high: H, log: true|false}}}}"
            )
        low, high = space["low"], space["high"]
        if not (isinstance(low, int | float) and isinstance(high, int | float) and low < high):
            raise UserError(
                f"search.params.{name}: low={low}, high={high}: need numbers, low < high"
            )
        if space.get("log") and low <= 0:
            raise UserError(f"search.params.{name}: a log scale needs low > 0 (got {low})")


def value_override(name: str, value: float) -> str:
    """``name=value`` as an override (a float Hydra reads back exactly)."""
    return f"{name}={value!r}"


def middle_of(s: SearchSettings) -> dict[str, float]:
    """Each parameter's midpoint (low + high) / 2: the values a config is checked with
    before any trial."""
    return {n: (p["low"] + p["high"]) / 2 for n, p in s.params.items()}


def optimize(s: SearchSettings, folder: Path, train_trial: TrainTrial) -> Any:
    """Run the study in ``folder`` to ``s.trials`` finished trials, each trained by
    ``train_trial`` in ``folder/trial_<n>``; returns the study."""
    folder.mkdir(parents=True, exist_ok=True)
    handlers = _log_to(folder / "search.log")
    try:
        return _optimize(s, folder, train_trial)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _optimize(s: SearchSettings, folder: Path, train_trial: TrainTrial) -> Any:
    """The study's loop: ask, train the trial's run, tell its validation error."""
    import optuna
    from optuna.trial import TrialState

    from sam.train import Diverged

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=s.study,
        storage=f"sqlite:///{folder.resolve()}/optuna.db",
        direction="minimize",
        load_if_exists=True,
    )
    # a rerun draws on from where the study stands, not the first draws again
    study.sampler = optuna.samplers.TPESampler(seed=s.seed + len(study.trials))
    _requeue_interrupted(study)
    while len(_finished(study)) < s.trials:
        trial = study.ask()
        job = trial.user_attrs.get("job", trial.number)
        trial.set_user_attr("job", job)
        values = {
            n: trial.suggest_float(n, p["low"], p["high"], log=bool(p.get("log")))
            for n, p in s.params.items()
        }
        run_dir = folder / f"trial_{job}"
        trial.set_user_attr("run_dir", str(run_dir))
        log.info(
            "trial %d (%d of %d): %s -> %s",
            trial.number,
            len(_finished(study)) + 1,
            s.trials,
            " ".join(value_override(n, v) for n, v in values.items()),
            run_dir,
        )
        try:
            results = train_trial(values, run_dir)
        except Diverged as err:  # a NaN/inf loss at these values: a failed trial, go on
            print(f"sam-search: trial {trial.number} diverged: {err}", file=sys.stderr)
            study.tell(trial, state=TrialState.FAIL)
            continue
        except UserError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        # anything else (a stop signal, Ctrl-C, a full disk) leaves the trial running:
        # the same command again resumes it
        if results["summary"]["eval_split"] != "val":
            raise UserError(
                f"{run_dir} evaluated on {results['summary']['eval_split']}, not "
                "a validation split: set dataset.val_fraction=0.1"
            )
        study.tell(trial, results["final"]["test_error"])  # the validation split's error
    best = study.best_trial
    print(
        f"sam-search: best of {len(_finished(study))} trials: "
        f"{' '.join(value_override(n, v) for n, v in best.params.items())} (validation "
        f"error {best.value:.2f}%, {best.user_attrs.get('run_dir')}); all: sam-report "
        f"{folder}",
        file=sys.stderr,
    )
    return study


def _finished(study: Any) -> list[Any]:
    """The study's finished trials, less those an interrupted search left running and a
    rerun took up again (``resumes``)."""
    trials = study.get_trials(deepcopy=False)
    again = {t.user_attrs["resumes"] for t in trials if "resumes" in t.user_attrs}
    return [t for t in trials if t.state.name in _FINISHED and t.number not in again]


def _requeue_interrupted(study: Any) -> None:
    """A trial an interrupted search left running is asked again first, with its
    parameters and run directory (the run resumes from its checkpoint); the stale one is
    closed as failed and not counted."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.enqueue_trial(
            t.params, user_attrs={"job": t.user_attrs.get("job", t.number), "resumes": t.number}
        )
        study.tell(t.number, state=TrialState.FAIL)
        log.info("trial %d was interrupted: it resumes", t.number)


def _log_to(path: Path) -> list[logging.Handler]:
    """The trials' log lines to stderr and ``path`` (as a Hydra job's log); the handlers."""
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(), logging.FileHandler(path)]
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    return handlers
