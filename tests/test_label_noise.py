"""Symmetric label noise (paper Table 4): the draw, where it is applied, what is recorded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from cifar_files import write_fake_cifar10
from helpers import splits_of
from hydra import compose, initialize_config_module

from sam.data.label_noise import add_label_noise
from sam.errors import UserError
from sam.train import run, runner, validate

ENV_CLI = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def independent_hash(labels) -> str:
    """sha256 of the labels as little-endian int64, computed here without the code's help."""
    return hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()[:16]


def clean_labels(n: int = 10_000, classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % classes


# ------------------------------------------------------------------------------ the draw
@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.8])
def test_flip_changes_exactly_the_chosen_fraction_to_other_classes(fraction):
    y = clean_labels()
    noisy, record = add_label_noise(y, 10, fraction, "flip", seed=3)
    changed = noisy != y
    assert int(changed.sum()) == round(fraction * len(y)) == record["chosen"]
    assert record["changed"] == record["chosen"]
    assert noisy.min() >= 0 and noisy.max() <= 9 and noisy.dtype == torch.int64


def test_uniform_redraws_from_all_classes_so_a_tenth_keep_their_label():
    y = clean_labels(20_000)
    noisy, record = add_label_noise(y, 10, 0.4, "uniform", seed=0)
    assert record["chosen"] == 8000
    # each chosen label stays with probability 1/10: changed ~ Binomial(8000, 0.9),
    # mean 7200, std 26.8; 5 std either side
    assert abs(record["changed"] - 7200) < 135
    assert record["changed"] == int((noisy != y).sum())
    # the new labels of the changed images are spread over all classes (each class
    # should get ~720 +- 27; a redraw biased to a few classes fails this)
    counts = torch.bincount(noisy[noisy != y], minlength=10)
    assert counts.min() > 580 and counts.max() < 860


def test_same_seed_same_labels_other_seed_other_labels_and_clean_input_untouched():
    y = clean_labels()
    before = y.clone()
    a, ra = add_label_noise(y, 10, 0.4, "uniform", seed=5)
    b, rb = add_label_noise(y, 10, 0.4, "uniform", seed=5)
    c, rc = add_label_noise(y, 10, 0.4, "uniform", seed=6)
    assert torch.equal(a, b) and ra == rb
    assert not torch.equal(a, c) and ra["hash"] != rc["hash"]
    assert torch.equal(y, before)
    assert ra["hash"] == independent_hash(a.numpy())


def test_zero_noise_is_the_identity():
    y = clean_labels(100)
    noisy, record = add_label_noise(y, 10, 0.0, "flip", seed=0)
    assert torch.equal(noisy, y) and record["changed"] == record["chosen"] == 0


@pytest.mark.parametrize(
    "fraction, mode",
    [
        (1.0, "uniform"),
        (-0.1, "uniform"),
        ("0.4", "uniform"),
        (True, "uniform"),
        (0.4, "symmetric"),
    ],
)
def test_bad_settings_are_one_line_errors(fraction, mode):
    with pytest.raises(UserError) as err:
        add_label_noise(clean_labels(10), 10, fraction, mode)
    assert "\n" not in str(err.value) and "dataset.label_noise" in str(err.value)


# ------------------------------------------------------------------ in the loaded data
def compose_cfg(data_dir, *overrides):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "dataset=cifar10",
                f"data_dir={data_dir}",
                "dataset.verify=false",
                "model=resnet20",
                "model.depth=8",
                "batch_size=10",
                "eval_batch_size=64",
                "epochs=2",
                "device=cpu",
                *overrides,
            ],
        )


@pytest.fixture
def fake_cifar(tmp_path):
    return tmp_path / "data", write_fake_cifar10(tmp_path / "data", per_batch=20, n_test=11)


def test_only_training_labels_get_noise_and_validation_labels_stay_clean(fake_cifar):
    root, files = fake_cifar
    splits = splits_of(
        compose_cfg(
            root,
            "dataset.label_noise=0.5",
            "dataset.val_fraction=0.2",
            "dataset.label_noise_mode=flip",
        )
    )
    assert splits.eval_split == "val"
    # val = the clean last 20 of the 100 training images; noise on the first 80 only
    assert torch.equal(splits.test_y, torch.from_numpy(files["train_y"][80:]))
    changed = splits.train_y != torch.from_numpy(files["train_y"][:80])
    assert int(changed.sum()) == 40 == splits.label_noise["changed"]
    test = splits_of(compose_cfg(root, "dataset.label_noise=0.5"))
    assert torch.equal(test.test_y, torch.from_numpy(files["test_y"]))  # test set clean
    assert test.label_noise["hash"] == independent_hash(test.train_y.numpy())


def test_noise_seed_defaults_to_the_run_seed_and_can_be_set_apart(fake_cifar):
    root, _ = fake_cifar
    labels = {}
    for name, extra in {
        "seed0": ["seed=0"],
        "seed1": ["seed=1"],
        "seed1_noise0": ["seed=1", "dataset.noise_seed=0"],
    }.items():
        labels[name] = splits_of(compose_cfg(root, "dataset.label_noise=0.4", *extra)).train_y
    assert torch.equal(labels["seed1_noise0"], labels["seed0"])
    assert not torch.equal(labels["seed1"], labels["seed0"])


@pytest.mark.parametrize(
    "override", ["dataset.label_noise=1", "dataset.label_noise_mode=x", "dataset.noise_seed=0.5"]
)
def test_validate_refuses_bad_noise_settings(fake_cifar, override):
    root, _ = fake_cifar
    with pytest.raises(UserError):
        validate(compose_cfg(root, override))


def test_sgd_and_sam_of_a_seed_train_on_the_same_noisy_labels_and_resume_keeps_them(
    fake_cifar, tmp_path
):
    root, files = fake_cifar
    records = {}
    for optim in ("sgd", "sam"):
        cfg = compose_cfg(root, f"optim={optim}", "dataset.label_noise=0.4", "seed=3")
        run(cfg, tmp_path / optim)
        records[optim] = json.loads((tmp_path / optim / "results.json").read_text())
    sgd, sam = records["sgd"], records["sam"]
    assert sgd["label_noise"] == sam["label_noise"]
    assert sgd["label_noise"]["fraction"] == 0.4 and sgd["label_noise"]["seed"] == 3
    assert sgd["summary"]["label_noise"] == sam["summary"]["label_noise"] == 0.4
    # the recorded hash is that of the labels the loader trains on
    noisy = splits_of(compose_cfg(root, "dataset.label_noise=0.4", "seed=3")).train_y
    assert sgd["label_noise"]["hash"] == independent_hash(noisy.numpy())
    assert not np.array_equal(noisy.numpy(), files["train_y"])

    # resume: the SAM run cut after epoch 1 of 2, then run again, records the same labels
    # and ends where the uninterrupted run did
    real_run_epoch = runner.run_epoch

    def cut_at_second_epoch(cfg, setup, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_run_epoch(cfg, setup, epoch, **kw)

    cfg = compose_cfg(root, "optim=sam", "dataset.label_noise=0.4", "seed=3")
    part = tmp_path / "part"
    with (
        mock.patch.object(runner, "run_epoch", cut_at_second_epoch),
        pytest.raises(KeyboardInterrupt),
    ):
        run(cfg, part)
    assert len(json.loads((part / "results.json").read_text())["history"]) == 1
    run(cfg, part)
    resumed = json.loads((part / "results.json").read_text())
    assert resumed["label_noise"] == sam["label_noise"]
    assert resumed["final"] == sam["final"]  # same labels, same training: same metrics


def test_clean_runs_record_no_noise(fake_cifar, tmp_path):
    root, _ = fake_cifar
    run(compose_cfg(root, "optim=sgd", "epochs=1"), tmp_path / "clean")
    results = json.loads((tmp_path / "clean" / "results.json").read_text())
    assert results["label_noise"] is None and results["summary"]["label_noise"] == 0.0


def test_cli_refuses_noise_of_one_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam.cli",
            "dataset=synthetic",
            "dataset.label_noise=1.0",
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **ENV_CLI},
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "dataset.label_noise=1.0" in lines[0]


# ------------------------------------------------------------------------------ recipes
def recipe(name, *overrides, hydra=False):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        return compose(
            "train", overrides=[f"experiment={name}", *overrides], return_hydra_config=hydra
        )


def test_table4_recipe_is_the_papers_setting():
    cfg = recipe("table4_label_noise", hydra=True)
    assert (cfg.dataset.name, cfg.model.depth, cfg.epochs) == ("cifar10", 32, 200)
    assert cfg.optim.rho == 0.1 and cfg.fidelity.name == "official"
    assert cfg.hydra.sweeper.params["dataset.label_noise"] == "0.2,0.4,0.6"
    assert cfg.hydra.sweeper.params.optim == "sgd,sam"
    assert recipe("table4_label_noise", "dataset.label_noise=0.8", "rho=0.05").optim.rho == 0.05


def test_miniature_recipe_sweeps_the_noisy_arm_over_three_seeds():
    cfg = recipe("miniature", hydra=True)
    params = cfg.hydra.sweeper.params
    assert str(params["dataset.label_noise"]) == "0.4" and params.optim == "sgd,sam"
    assert str(params.seed).split(",") == ["0", "1", "2"]
    assert "dataset.label_noise=0.0 seed=0,1" in open("Makefile").read()  # the clean arm
    assert cfg.sharpness.every == cfg.epochs  # lambda_max at the final weights
    assert cfg.dataset.name == "cifar10" and not cfg.dataset.get("fallback_synthetic")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_sharpness_subset_is_not_the_noise_draw(seed: int) -> None:
    """The fixed subset that sharpness and sam-landscape measure on (seed = run seed) holds
    noisy labels in about the training set's proportion: both draws once came from the same
    permutation of the same seed, and every image of the subset had a noisy label."""
    from sam.sharpness import fixed_subset

    n, images = 5000, 256
    clean = torch.arange(n) % 10
    noisy, _ = add_label_noise(clean, 10, 0.4, "flip", seed=seed)  # 2,000 labels changed
    index = torch.arange(n)
    x = torch.stack([index // 256, index % 256, torch.zeros(n, dtype=torch.long)], 1)
    x = x.to(torch.uint8).view(n, 3, 1, 1)  # each image spells its own index
    xs, ys = fixed_subset(x, noisy, images, seed, (0.0,) * 3, (1.0,) * 3, "cpu")
    digits = (xs[:, :2, 0, 0] * 255).round().long()
    picked = digits[:, 0] * 256 + digits[:, 1]
    assert torch.equal(ys, noisy[picked]) and len(set(picked.tolist())) == images
    share = (noisy[picked] != clean[picked]).float().mean().item()
    assert 0.25 < share < 0.55  # binomial around 0.4 (sd 0.03); the shared draw gave 1.0


def test_table4_stages_are_recipes_with_the_papers_sweeps():
    mixup = recipe("table4_mixup", hydra=True)
    params = mixup.hydra.sweeper.params
    assert mixup.optim.name == "sgd" and params.optim == "sgd"  # -m or not: SGD + Mixup
    assert str(params["augment.mixup_alpha"]).split(",") == ["1", "8", "16", "32"]
    assert params["dataset.label_noise"] == "0.2,0.4,0.6" and (mixup.epochs, mixup.m) == (200, 32)
    boot = recipe("table4_bootstrap", hydra=True)
    assert boot.optim.name == "sam" and boot.hydra.sweeper.params.optim == "sam"
    assert boot.bootstrap == "<stage-1 sweep dir>"  # refused until bootstrap=<dir> is given
    assert recipe("table4_bootstrap", "bootstrap=/d").bootstrap == "/d"
    # the first stage's config but for bootstrap: each run finds its source by config
    plain = recipe("table4_label_noise", "optim=sam")
    boot = recipe("table4_bootstrap", "bootstrap=/d")
    assert {**boot, "bootstrap": None} == {**plain, "bootstrap": None}
    # a miniature bootstrap/Mixup run is an override of the miniature
    mini = recipe("miniature", "augment.mixup_alpha=8", "bootstrap=/d")
    validate(mini)
    assert mini.augment.name == "none" and mini.augment.mixup_alpha == 8


# ------------------------------------------------------------------ the report's Table 4
def table4_run(root, name, optim, seed, error, noise, *, alpha=0.0, boot=None, rho=0.1):
    """A complete 200-epoch ResNet-32 run with final test error ``error``."""
    from sam.results import write_json

    summary = {
        "dataset": "cifar10",
        "model": "resnet32",
        "augment": "basic",
        "epochs": 200,
        "eval_split": "test",
        "fidelity": "official",
        "label_noise": noise,
        "init_seed": 0,
        "optim": optim,
        "seed": seed,
        "m": 32,
        "batch_size": 256,
        "rho": rho if optim == "sam" else None,
        "lr": 0.1,
        "lam": 5e-4,
        "mixup_alpha": alpha,
        "bootstrap": boot,
    }
    write_json(
        root / name / "results.json",
        {
            "schema_version": 1,
            "status": "complete",
            "error": None,
            "summary": summary,
            "overrides": [],
            "config": {},
            "history": [{"epoch": 200, "test_error": error}],
            "final": {"epoch": 200, "test_error": error},
            "precision": "fp32",
        },
    )


def test_the_report_prints_table4s_five_rows_beside_the_papers(tmp_path, capsys):
    from sam.report import main as report_main

    # per row, errors at 20% / 40% for seeds 0 and 1 (n=2: mean = the midpoint)
    for noise, sgd, sam, bsam in [(0.2, 16.0, 6.0, 5.0), (0.4, 32.0, 8.0, 7.0)]:
        for seed in (0, 1):
            d = seed - 0.5  # errors x -/+ 0.5: mean x
            table4_run(tmp_path, f"sgd{noise}{seed}", "sgd", seed, sgd + d, noise)
            table4_run(tmp_path, f"sam{noise}{seed}", "sam", seed, sam + d, noise)
            table4_run(tmp_path, f"bsam{noise}{seed}", "sam", seed, bsam + d, noise, boot="/s")
            # Mixup: alpha 8 best at 20%, alpha 1 at 40%; its bootstrap 1 point lower
            for alpha, err in [(1.0, {0.2: 9.0, 0.4: 12.0}), (8.0, {0.2: 8.0, 0.4: 13.0})]:
                table4_run(
                    tmp_path,
                    f"mix{noise}{alpha}{seed}",
                    "sgd",
                    seed,
                    err[noise] + d,
                    noise,
                    alpha=alpha,
                )
                table4_run(
                    tmp_path,
                    f"bmix{noise}{alpha}{seed}",
                    "sgd",
                    seed,
                    err[noise] - 1 + d,
                    noise,
                    alpha=alpha,
                    boot="/s",
                )
    assert report_main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    section = text.split("## Table 4: label noise")[1].split("\n## ")[0]
    assert "CHOSEN ON THE TEST SET" in section
    table = section.split("Every setting")[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    }
    half = 12.706 * 0.5 * 2**0.5 / 2**0.5  # t_{0.975,1} s / sqrt(n), s = 0.5 sqrt(2)
    assert f"{half:.2f}" == "6.35"
    want = {  # row: (20% cell, its paper cell, 40% cell, its paper cell)
        "SGD": (
            "16.00 ± 6.35 (n=2)",
            "15.2 (100-84.8 acc)",
            "32.00 ± 6.35 (n=2)",
            "31.2 (100-68.8 acc)",
        ),
        "Mixup": (
            "8.00 ± 6.35 (n=2) [alpha=8]*",
            "7.0 (100-93.0 acc)",
            "12.00 ± 6.35 (n=2) [alpha=1]*",
            "10.0 (100-90.0 acc)",
        ),
        "Bootstrap + Mixup": (
            "7.00 ± 6.35 (n=2) [alpha=8]*",
            "6.7 (100-93.3 acc)",
            "11.00 ± 6.35 (n=2) [alpha=1]*",
            "8.0 (100-92.0 acc)",
        ),
        "SAM": (
            "6.00 ± 6.35 (n=2) [rho=0.1]",
            "4.9 (100-95.1 acc)",
            "8.00 ± 6.35 (n=2) [rho=0.1]",
            "6.6 (100-93.4 acc)",
        ),
        "Bootstrap + SAM": (
            "5.00 ± 6.35 (n=2) [rho=0.1]",
            "4.6 (100-95.4 acc)",
            "7.00 ± 6.35 (n=2) [rho=0.1]",
            "5.8 (100-94.2 acc)",
        ),
    }
    assert list(want) == [r for r in rows if r in want]  # the paper's order
    for row, cells in want.items():
        assert tuple(rows[row][1:5]) == cells, row
    # every alpha is listed under the table
    assert "| Mixup | 0.4 | alpha=8 | 13.00 ± 6.35 (n=2) |" in section
    # the main table keeps plain SGD vs SAM: 2 seeds each, no Mixup or bootstrap run in them
    main_table = text.split("\n## ")[0]
    assert main_table.count("(n=2)") == 4 and "(n=6)" not in main_table
    assert "mixes" not in text  # no warning about cells mixing Mixup with plain runs
