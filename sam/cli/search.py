"""``python -m sam.cli.search`` (sam-search): an Optuna study over sam-train runs,
minimizing the final validation error.

    python -m sam.cli.search experiment=rho_search_optuna search.trials=20 [overrides ...]

The search space, the number of trials and the study's name are the config's ``search``
node (configs/experiment/rho_search_optuna.yaml; ``SearchSettings``); everything else is
sam-train's config, composed the same way. Each trial is an ordinary run directory
``<search.dir>/trial_<n>/`` (results.json, checkpoints, trackers), trained in this process,
so ``sam-report <search.dir>`` tabulates the trials. The study lives in
``<search.dir>/optuna.db`` (SQLite) under a fixed name: the same command again adds the
trials still missing from ``search.trials`` and first finishes a trial that was interrupted
(same parameters, same directory: the run resumes from its checkpoint).

The objective is the validation error (``dataset.val_fraction`` > 0, as the paper chose rho
on a held-out 10% of the training set); a search without a validation split is refused.
Not Hydra's ``hydra/sweeper=optuna``: hydra-optuna-sweeper 1.3 pins optuna < 3, and Hydra
1.3.8 instantiates sweepers only from the ``hydra_plugins`` package (docs/recipes.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

from sam.cli._hydra import guarded
from sam.errors import UserError

log = logging.getLogger("sam.search")

_FINISHED = ("COMPLETE", "FAIL", "PRUNED")


def search_settings(cfg: DictConfig):
    """The checked ``search`` node of a composed config (``SearchSettings``), and its
    parameters' ranges checked: low < high, low > 0 on a log scale."""
    from sam.settings.fields import read
    from sam.settings.schema import SearchSettings

    node = cfg.get("search")
    if node is None:
        raise UserError(
            "sam-search needs a search space: experiment=rho_search_optuna, or "
            "search.params.rho={low:0.01,high:0.5,log:true}"
        )
    s = read(SearchSettings, OmegaConf.to_container(node, resolve=True), "search.")
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
    return s


def compose_trial(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """sam-train's config for ``overrides`` (without its ``search`` node, which is not the
    run's) and the groups' choices (the run's summary names the model by its option)."""
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if isinstance(v, str)}
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.pop("search", None)
    return cfg, choices


def check_objective(cfg: DictConfig) -> None:
    """UserError unless the runs evaluate on a validation split (the objective)."""
    from sam.settings import read_settings

    settings = read_settings(OmegaConf.to_container(cfg, resolve=True))
    if settings.dataset.val_fraction <= 0:
        raise UserError(
            "sam-search minimizes the validation error, and dataset.val_fraction "
            "is 0 (runs evaluate on the test set): set dataset.val_fraction=0.1 "
            "(the paper held out 10% of the training set)"
        )


def value_override(name: str, value: float) -> str:
    """``name=value`` as an override (a float Hydra reads back exactly)."""
    return f"{name}={value!r}"


def run_search(overrides: list[str]) -> Any:
    """Run the study of ``overrides`` (sam-train's, with a ``search`` node) to
    ``search.trials`` finished trials; returns the study."""
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        whole = compose(config_name="train", overrides=overrides)
    s = search_settings(whole)
    middle = [value_override(n, (p["low"] + p["high"]) / 2) for n, p in s.params.items()]
    check_objective(compose_trial([*overrides, *middle])[0])  # before any trial
    folder = Path(s.dir or f"outputs/search/{s.study}")
    folder.mkdir(parents=True, exist_ok=True)
    handlers = _log_to(folder / "search.log")
    try:
        return _optimize(s, overrides, folder)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _optimize(s: Any, overrides: list[str], folder: Path) -> Any:
    """The study's loop: ask, train the trial's run, tell its validation error."""
    import optuna
    from optuna.trial import TrialState

    from sam.train import Diverged, run

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
        trial_overrides = [*overrides, *(value_override(n, v) for n, v in values.items())]
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
        cfg, choices = compose_trial(trial_overrides)
        try:
            results = run(
                cfg,
                run_dir,
                overrides=trial_overrides,
                choices=choices,
                multirun=True,
                invocation_files=_invocation(cfg, trial_overrides),
            )
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


def _invocation(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    """The files a run keeps in ``.hydra/`` (as sam-train's), without Hydra's own."""
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(overrides))),
    }


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


def search_main() -> None:
    """``sam-search``: one line and exit status 2 on a bad config, 130 when interrupted
    (the same command resumes)."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    guarded(
        "sam-search",
        lambda: run_search(args),
        "interrupted; rerun the same command to resume the search",
    )


if __name__ == "__main__":
    search_main()
