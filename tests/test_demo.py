"""The demo's closing lines (sam/report/demo.py) from results.json files with hand-set
values: pairs by seed and noisy labels, counts the seeds on which SAM is lower, says so
when it is not, and always says what the demo does not show."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from sam.report.demo import NOT_SHOWN, RECORD, demo_lines, main, noisy_pairs
from sam.report.runs import collect
from sam.results import write_json


def write_run(root: Path, optim: str, seed: int, final: float, train_error: float, *,
              label_hash: str | None = None, **summary) -> None:
    """A finished 3-epoch label-noise run: test error 50, 40, ``final``; the last epoch's
    training error ``train_error``; 400 of 1,000 labels changed."""
    history = [{"epoch": e, "test_error": t, "train_error": train_error + 10 * (3 - e)}
               for e, t in ((1, 50.0), (2, 40.0), (3, final))]
    run = {
        "schema_version": 1, "status": "complete", "error": None, "overrides": [],
        "summary": {"dataset": "cifar10", "model": "resnet20", "augment": "none",
                    "epochs": 3, "optim": optim, "rho": 0.1 if optim == "sam" else None,
                    "m": None, "variant": None, "seed": seed, "batch_size": 64,
                    "label_noise": 0.4, "bootstrap": None, "mixup_alpha": 0.0, **summary},
        # all that tells these runs apart (the report counts a repeated config once)
        "config": {"dataset": {"subset": 1000}, "seed": seed, "optim": optim,
                   "mixup_alpha": summary.get("mixup_alpha", 0.0), "labels": label_hash,
                   "label_noise": summary.get("label_noise", 0.4)},
        "label_noise": {"fraction": 0.4, "changed": 400,
                        "hash": label_hash or f"labels{seed}"},
        "history": history, "final": history[-1],
    }
    name = f"{optim}_{seed}_{summary.get('mixup_alpha', 0)}_{label_hash}"
    write_json(root / name / "results.json", run)


def test_seeds_where_sam_is_lower_are_counted_and_the_others_named(tmp_path, capsys):
    for seed, (sgd, sam) in enumerate([(60.0, 52.0), (58.0, 55.0), (50.0, 51.5)]):
        write_run(tmp_path, "sgd", seed, sgd, 0.5)
        write_run(tmp_path, "sam", seed, sam, 45.0)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    gaps = [-8.0, -3.0, 1.5]  # SAM - SGD per seed, by hand
    mean = sum(gaps) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(gaps) / 3**0.5
    assert "lower on 2 of 3 seed(s)" in out
    assert f"{mean:.2f} ± {half:.2f} (n=3)" in out
    assert f"NOT on every seed here (the record, {RECORD}" in out
    assert "1000 training images with label_noise 0.4 (400 labels changed: 40% wrong)" in out
    assert "seed 2: SAM 51.5% vs SGD 50.0% (training error SAM 45.0%, SGD 0.5%; " \
           "SGD's best epoch 40.0%)" in out
    assert out.rstrip().endswith(NOT_SHOWN)


def test_only_plain_noisy_sgd_sam_pairs_on_the_same_labels_count(tmp_path):
    write_run(tmp_path, "sgd", 0, 60.0, 0.5)
    write_run(tmp_path, "sam", 0, 50.0, 45.0)
    write_run(tmp_path, "sgd", 0, 40.0, 30.0, mixup_alpha=8.0)  # a Mixup run: not SGD's
    write_run(tmp_path, "sam", 1, 50.0, 45.0)  # seed 1's SGD trained on other labels
    write_run(tmp_path, "sgd", 1, 60.0, 0.5, label_hash="other")
    write_run(tmp_path, "sam", 2, 50.0, 45.0, label_noise=0.0)  # clean: not a noise pair
    write_run(tmp_path, "sgd", 2, 60.0, 0.5, label_noise=0.0)
    complete, _ = collect([tmp_path])
    pairs = noisy_pairs(complete)
    assert [(a["summary"]["seed"], b["final"]["test_error"]) for a, b in pairs] == [(0, 50.0)]
    lines = demo_lines(complete)
    assert "lower on 1 of 1 seed(s)" in lines[0] and "NOT" not in lines[0]


def test_no_noisy_pair_says_there_is_nothing_to_conclude(tmp_path, capsys):
    write_run(tmp_path, "sgd", 0, 60.0, 0.5)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("No SGD/SAM pair trained on noisy labels")
    assert main([]) == 2  # no directory: usage, exit 2


@pytest.mark.parametrize("name", ["synthetic", "synthetic (fallback for cifar10)"])
def test_synthetic_runs_are_said_to_show_nothing(tmp_path, name):
    write_run(tmp_path, "sgd", 0, 60.0, 0.5, dataset=name)
    write_run(tmp_path, "sam", 0, 50.0, 45.0, dataset=name)
    lines = demo_lines(collect([tmp_path])[0])
    assert lines[0].startswith("These runs trained on SYNTHETIC data")
    assert "says nothing about SAM" in lines[0]
