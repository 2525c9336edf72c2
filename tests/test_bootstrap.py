"""Bootstrap labels (bootstrap=<run or sweep dir>, sam/train/bootstrap.py): the labels are
the source's final model's predictions, recorded with their hash, found in a sweep by
config, stored so that a resumed run continues exactly without the source, and every bad
source is one line with exit status 2."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    TINY_RUN,
    compose_train,
    console_in_process,
    preempt_after_steps,
    settings_of,
    splits_of,
)
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from sam.cli.train import train_main
from sam.errors import UserError
from sam.train import Preempted, run
from sam.train.bootstrap import LABELS_FILE, relabeller
from sam.train.build import build_data

TINY = [*TINY_RUN, "dataset.label_noise=0.4"]
KEYS = ("train_loss", "train_error", "test_loss", "test_error", "lr")


def config(*overrides: str):
    return compose_train(*TINY, *overrides)


def independent_hash(labels) -> str:
    return hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()[:16]


def outcome(run_dir: Path) -> tuple[list, dict]:
    history = json.loads((run_dir / "results.json").read_text())["history"]
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    return [[h[k] for k in KEYS] for h in history], weights


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py's: one torch thread


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """A first stage as a sweep leaves it: SGD and SAM of seed 0, 40% noisy labels."""
    root = tmp_path_factory.mktemp("stage1")
    for optim in ("sgd", "sam"):
        run(config(f"optim={optim}"), root / f"optim={optim},seed=0")
    return root


@pytest.fixture(scope="module")
def bootstrapped(stage1, tmp_path_factory) -> Path:
    """Bootstrap + SAM, its source found in the stage-1 sweep by config, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("stage2") / "whole"
    run(config("optim=sam", f"bootstrap={stage1}"), run_dir)
    return run_dir


def test_the_labels_are_the_source_models_predictions_and_are_recorded(stage1, bootstrapped):
    source = stage1 / "optim=sam,seed=0"  # the SAM run, not the SGD one: matched by config
    results = json.loads((bootstrapped / "results.json").read_text())
    record = results["bootstrap"]
    assert record["run"] == str(source) and record["source"] == str(stage1)
    assert results["summary"]["bootstrap"] == str(source)
    assert results["config"]["bootstrap"] == str(stage1)  # the stored config
    # an independent prediction: the source's model from its config, its final weights, the
    # training images normalized by hand, argmax of the logits
    src = json.loads((source / "results.json").read_text())
    model = instantiate(src["config"]["model"]).double().eval()
    model.load_state_dict(
        torch.load(source / "checkpoints" / "last.pt", weights_only=True)["model"]
    )
    splits = splits_of(config())
    mean = torch.tensor(splits.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(splits.std, dtype=torch.float64).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((splits.train_x.double() / 255 - mean) / std)
    expected = logits.argmax(1)
    top2 = logits.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4  # no near-tie that float32 could flip
    stored = torch.load(bootstrapped / LABELS_FILE, weights_only=True)
    assert torch.equal(stored["labels"], expected)
    assert record["hash"] == stored["hash"] == independent_hash(expected.numpy())
    assert record["replaced_hash"] == src["label_noise"]["hash"]  # the noisy labels replaced
    assert record["changed"] == int((expected != splits.train_y).sum()) > 0
    clean = splits_of(config("dataset.label_noise=0.0")).train_y
    assert record["clean_agreement"] == pytest.approx((expected == clean).double().mean())
    # and the run trains on them: its training loader holds the stored labels
    s = settings_of(config("optim=sam", f"bootstrap={stage1}"))
    data = build_data(s, torch.device("cpu"), relabeller(s, {}, bootstrapped, write=False))
    assert torch.equal(data.train.y, expected) and data.bootstrap["hash"] == record["hash"]


def test_a_bootstrap_run_resumes_exactly_even_after_its_source_moved(
    stage1, bootstrapped, tmp_path, monkeypatch
):
    """SIGTERM at step 5 of epoch 2, the stage-1 sweep moved away, the same command again:
    the run ends bit-identical to the uninterrupted one (its labels come from its own
    directory)."""
    copy = tmp_path / "stage1"
    shutil.copytree(stage1, copy)
    cfg = config("optim=sam", f"bootstrap={copy}")
    preempt_after_steps(monkeypatch, 13)
    with pytest.raises(Preempted):
        run(cfg, tmp_path / "part")
    monkeypatch.undo()
    copy.rename(tmp_path / "moved")
    assert run(cfg, tmp_path / "part")["status"] == "complete"
    (want, want_w), (got, got_w) = outcome(bootstrapped), outcome(tmp_path / "part")
    assert got == want and all(torch.equal(got_w[k], want_w[k]) for k in want_w)
    # what it recorded about its labels did not change either
    before = json.loads((bootstrapped / "results.json").read_text())["bootstrap"]
    after = json.loads((tmp_path / "part" / "results.json").read_text())["bootstrap"]
    assert {k: after[k] for k in ("hash", "changed", "replaced_hash")} == {
        k: before[k] for k in ("hash", "changed", "replaced_hash")
    }


def test_damaged_or_foreign_labels_files_are_refused(stage1, bootstrapped, tmp_path):
    s = settings_of(config("optim=sam", f"bootstrap={stage1}"))
    splits = splits_of(config())
    stored = torch.load(bootstrapped / LABELS_FILE, weights_only=True)
    for name, change in [
        ("damaged", {"labels": (stored["labels"] + 1) % 10}),
        ("foreign", {"source": "elsewhere"}),
    ]:
        (tmp_path / name).mkdir()
        torch.save({**stored, **change}, tmp_path / name / LABELS_FILE)
        with pytest.raises(UserError, match=name if name == "damaged" else "another source"):
            relabeller(s, {}, tmp_path / name, write=False)(splits, torch.device("cpu"))


# ------------------------------------------------------------------ bad sources: one line
def refused(monkeypatch, capsys, tmp_path, *overrides) -> str:
    code, _, err = console_in_process(
        monkeypatch,
        capsys,
        "sam-train",
        train_main,
        *TINY,
        *overrides,
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_bad_sources_are_one_line_errors(stage1, tmp_path, monkeypatch, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(stage1 / "optim=sam,seed=0", unfinished)
    results = json.loads((unfinished / "results.json").read_text())
    (unfinished / "results.json").write_text(json.dumps({**results, "status": "running"}))
    cases = [
        ([f"bootstrap={tmp_path / 'nowhere'}"], "no such directory"),
        ([f"bootstrap={unfinished}"], "is running, not complete"),
        # a run directory of another noise level / subset: another training set (a sweep's
        # run directory holds "=" and ",": quoted, as Hydra's grammar asks)
        (
            [f"bootstrap='{stage1 / 'optim=sam,seed=0'}'", "dataset.label_noise=0.2"],
            "another training set (dataset.label_noise=0.4 (now 0.2)",
        ),
        (
            [f"bootstrap='{stage1 / 'optim=sam,seed=0'}'", "dataset.train_size=96"],
            "another training set (dataset.train_size=128 (now 96)",
        ),
        # a sweep without a run of this config: the nearest one's difference is named
        ([f"bootstrap={stage1}", "seed=1"], "none of the 2 run(s) there has this run's config"),
        # the second-stage recipe without its source
        (["experiment=table4_bootstrap", "m=null"], "bootstrap is not set"),
    ]
    for overrides, message in cases:
        line = refused(monkeypatch, capsys, tmp_path, "optim=sam", *overrides)
        assert message in line, line
    assert "seed=0 (now 1)" in refused(
        monkeypatch, capsys, tmp_path, "optim=sam", f"bootstrap={stage1}", "seed=1"
    )


def test_an_image_set_cannot_be_bootstrapped():
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["dataset=flowers102", "model=resnet18", "augment=none", "bootstrap=x"],
        )
    with pytest.raises(UserError, match="bootstrap labels need a dataset held in memory"):
        relabeller(settings_of(cfg), {}, Path("unused"), write=False)


def test_two_complete_matches_in_a_sweep_are_ambiguous(stage1, tmp_path):
    sweep = tmp_path / "sweep"
    for copy in ("a", "b"):
        shutil.copytree(stage1 / "optim=sam,seed=0", sweep / copy)
    with pytest.raises(UserError, match="2 complete runs there match"):
        run(config("optim=sam", f"bootstrap={sweep}"), tmp_path / "run")
