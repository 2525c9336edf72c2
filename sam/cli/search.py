"""sam-search: an Optuna study of sam-train runs, minimizing the final validation error.

Usage: sam-search [sam-train overrides ...] [search.<option>=VALUE ...]
       (python -m sam.cli.search is the same)

Examples:
  sam-search experiment=rho_search_optuna                    # WRN-28-10, 20 trials of rho
  sam-search experiment=rho_search_optuna search.trials=30   # the same study, to 30 trials
  sam-search experiment=rho_search_optuna '+search.params.lr={low:0.02,high:0.5,log:true}'

Options (the config's search node; everything else is sam-train's config, composed alike):
  search.params   the search space: a config key -> {low, high, log}
                  (rho_search_optuna: rho: {low: 0.01, high: 0.5, log: true})
  search.trials   finished trials in all [20]; a rerun adds the missing ones
  search.study    the study's name in its storage [rho_search]
  search.dir      the study's folder [null = outputs/search/<study>]
  search.seed     the TPE sampler's seed [0]

Outputs:
  <search.dir>/optuna.db    the study (SQLite): the same command resumes it, first
                            finishing an interrupted trial (same values, same directory)
  <search.dir>/trial_<n>/   an ordinary run directory per trial: sam-report <search.dir>
  <search.dir>/search.log   the trials' log lines

The objective is the validation error: dataset.val_fraction > 0 (the paper held out 10% of
the training set); a search without it is refused. A bad config: one line, exit 2; Ctrl-C:
exit 130 (rerun to resume). Not Hydra's hydra/sweeper=optuna: hydra-optuna-sweeper 1.3 pins
optuna < 3 (docs/recipes.md).
"""

# The study's loop is sam/train/search.py; this entry point composes the trials' configs.

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

from sam.cli._hydra import guarded
from sam.errors import UserError
from sam.settings.schema import SearchSettings
from sam.train.search import check_space, middle_of, optimize, value_override


def search_settings(cfg: DictConfig) -> SearchSettings:
    """The checked ``search`` node of a composed config, its ranges checked."""
    from sam.settings.fields import read

    node = cfg.get("search")
    if node is None:
        raise UserError(
            "sam-search needs a search space: experiment=rho_search_optuna, or "
            "search.params.rho={low:0.01,high:0.5,log:true}"
        )
    s = read(SearchSettings, OmegaConf.to_container(node, resolve=True), "search.")
    check_space(s)
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


def run_search(overrides: list[str]):
    """Run the study of ``overrides`` (sam-train's, with a ``search`` node) to
    ``search.trials`` finished trials; returns the study."""
    from sam.train import run

    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        whole = compose(config_name="train", overrides=overrides)
    s = search_settings(whole)
    middle = [value_override(n, v) for n, v in middle_of(s).items()]
    check_objective(compose_trial([*overrides, *middle])[0])  # before any trial

    def train_trial(values: dict[str, float], run_dir: Path) -> dict:
        trial_overrides = [*overrides, *(value_override(n, v) for n, v in values.items())]
        cfg, choices = compose_trial(trial_overrides)
        invocation = {  # the files a run keeps in .hydra/ (as sam-train's), not Hydra's own
            "config.yaml": OmegaConf.to_yaml(cfg),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(trial_overrides))),
        }
        return run(
            cfg,
            run_dir,
            overrides=trial_overrides,
            choices=choices,
            multirun=True,
            invocation_files=invocation,
        )

    return optimize(s, Path(s.dir or f"outputs/search/{s.study}"), train_trial)


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
