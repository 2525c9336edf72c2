"""sam-search (sam/cli/search.py, sam/train/search.py): an Optuna study over sam-train runs
on tiny synthetic data; the study read back with Optuna's own API, the trials' run directories with
sam-report's reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import console_in_process

optuna = pytest.importorskip("optuna")

from sam.cli.search import run_search, search_main  # noqa: E402
from sam.report.runs import collect  # noqa: E402

# 64 images, a quarter held out for validation, batches of 16, a ResNet-8: ~1 s a trial
TINY = [
    "experiment=rho_search_optuna",
    "dataset=synthetic",
    "model=resnet20",
    "model.depth=8",
    "m=null",
    "batch_size=16",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "dataset.val_fraction=0.25",
    "eval_batch_size=32",
    "epochs=1",
    "deterministic=true",
    "device=cpu",
    "progress=false",
]


def study_of(folder: Path):
    return optuna.load_study(study_name="rho_search", storage=f"sqlite:///{folder}/optuna.db")


def results_of(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def test_trials_are_run_directories_scored_on_validation_and_the_study_resumes(tmp_path):
    folder = tmp_path / "search"
    run_search([*TINY, "search.trials=2", f"search.dir={folder}"])
    assert len(study_of(folder).trials) == 2
    run_search([*TINY, "search.trials=4", f"search.dir={folder}"])  # 2 more, not 4
    trials = study_of(folder).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    for t in trials:
        assert 0.01 <= t.params["rho"] <= 0.5
        results = results_of(t.user_attrs["run_dir"])
        assert Path(t.user_attrs["run_dir"]) == folder / f"trial_{t.number}"
        assert results["status"] == "complete" and results["summary"]["eval_split"] == "val"
        assert results["config"]["optim"]["rho"] == t.params["rho"]  # exactly the value drawn
        assert t.value == results["final"]["test_error"]  # the held-out 16 images' error
        assert t.value * 16 / 100 == pytest.approx(round(t.value * 16 / 100))
    assert len({t.params["rho"] for t in trials}) == 4
    complete, others = collect([folder])  # what sam-report tabulates
    assert len(complete) == 4 and not others


def test_an_interrupted_trial_resumes_in_its_directory(tmp_path, monkeypatch):
    """Ctrl-C in trial 1's second epoch: the rerun trains trial 1's directory on from its
    checkpoint with the same rho, and counts it once."""
    from sam.train import runner

    add_epoch = runner.add_epoch
    calls = []

    def interrupt(results, metrics):
        calls.append(metrics["epoch"])
        if len(calls) == 4:  # trial 0: epochs 1, 2; trial 1: epoch 1, then epoch 2
            raise KeyboardInterrupt
        add_epoch(results, metrics)

    folder = tmp_path / "search"
    args = [*TINY, "epochs=2", "search.trials=2", f"search.dir={folder}"]
    monkeypatch.setattr(runner, "add_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_search(args)
    [_, stopped] = study_of(folder).trials
    assert stopped.state.name == "RUNNING"
    assert results_of(folder / "trial_1")["history"][0]["epoch"] == 1
    monkeypatch.setattr(runner, "add_epoch", add_epoch)
    run_search(args)
    trials = study_of(folder).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == stopped.params and trials[2].user_attrs["resumes"] == 1
    results = results_of(folder / "trial_1")
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    assert results["config"]["optim"]["rho"] == stopped.params["rho"]
    assert trials[2].value == results["final"]["test_error"]
    assert sorted(p.name for p in folder.glob("trial_*")) == ["trial_0", "trial_1"]


def test_a_search_without_a_validation_split_is_refused(tmp_path, monkeypatch, capsys):
    code, _, err = console_in_process(
        monkeypatch,
        capsys,
        "sam-search",
        search_main,
        *TINY,
        "dataset.val_fraction=0",
        f"search.dir={tmp_path / 'search'}",
    )
    assert code == 2
    assert err.startswith("sam-search: error: ") and "dataset.val_fraction=0.1" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "search").exists()  # refused before any trial


def test_a_bad_search_space_is_one_line(monkeypatch, capsys):
    code, _, err = console_in_process(
        monkeypatch, capsys, "sam-search", search_main, *TINY, "search.params.rho.low=0"
    )
    assert code == 2 and "log scale needs low > 0" in err
