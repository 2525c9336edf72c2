"""dataset.fallback_synthetic: synthetic data only when the data is absent from the
default location (data/, SAM_DATA unset); any wrong value stays a one-line error; a
fallback run says "synthetic (fallback for ...)" in results.json and in its report row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cifar_files import write_fake_cifar10
from helpers import compose_train as make
from helpers import splits_of

from sam.data import DataMissing
from sam.errors import UserError

FALLBACK = ["dataset=cifar10", "dataset.fallback_synthetic=true"]


@pytest.fixture
def bare_cwd(tmp_path, monkeypatch):
    """A working directory without data/, SAM_DATA unset: the default location is empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAM_DATA", raising=False)
    return tmp_path


def test_absent_at_default_location_falls_back_with_the_asked_sizes(bare_cwd):
    cfg = make(*FALLBACK, "dataset.subset=300", "dataset.test_subset=50")
    assert cfg.dataset.data_dir == "data" and cfg.dataset.download is True
    s = splits_of(cfg)  # the download is refused (SAM_OFFLINE), then the fallback
    assert (len(s.train_x), len(s.test_x)) == (300, 50)
    assert s.name == "synthetic (fallback for cifar10)"
    assert "CIFAR-10 not found" in s.fallback and s.source.startswith("SYNTHETIC fallback")
    assert not (bare_cwd / "data").exists()


@pytest.mark.parametrize("where", ["data_dir", "SAM_DATA"])
def test_a_named_location_without_data_is_an_error(bare_cwd, monkeypatch, where):
    missing = bare_cwd / "typo"
    if where == "SAM_DATA":
        monkeypatch.setenv("SAM_DATA", str(missing))
        cfg = make(*FALLBACK)
    else:
        cfg = make(*FALLBACK, f"data_dir={missing}")
    with pytest.raises(DataMissing, match=f"not found under '{missing}'"):
        splits_of(cfg)
    assert not missing.exists()


def test_a_wrong_subset_is_an_error_not_a_fallback(bare_cwd):
    write_fake_cifar10(bare_cwd / "data")  # 5 x 6 = 30 training images
    with pytest.raises(UserError, match=r"dataset\.subset=31 is out of range: use 1\.\.30"):
        splits_of(make(*FALLBACK, "dataset.verify=false", "dataset.subset=31"))


def test_bad_checksums_at_default_location_are_an_error_not_a_fallback(bare_cwd):
    write_fake_cifar10(bare_cwd / "data")
    with pytest.raises(UserError, match="checksum failed") as e:
        splits_of(make(*FALLBACK))
    assert not isinstance(e.value, DataMissing)


def _sam(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("SAM_DATA", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_demo_preset_with_the_synthetic_dataset_makes_its_subset(bare_cwd):
    """experiment=demo asks for a subset larger than synthetic's 1,024 generated images:
    that many are generated (as the fallback does), not "dataset.subset is out of range"."""
    demo = make("experiment=demo")
    s = splits_of(make("experiment=demo", "dataset=synthetic"))
    assert (len(s.train_x), len(s.test_x)) == (demo.dataset.subset, demo.dataset.test_subset)
    assert s.name == "synthetic"
    small = splits_of(make("dataset=synthetic", "dataset.subset=100"))  # within: the first 100
    assert len(small.train_x) == 100 and len(small.test_x) == 256


def test_fallback_run_is_labelled_in_results_and_report_and_a_typo_exits_2(tmp_path):
    small = ["experiment=demo", "epochs=1", "dataset.subset=128", "dataset.test_subset=64"]
    proc = _sam("sam.cli", *small, "data_dir=typo", "hydra.run.dir=bad", cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "not found under" in lines[0] and "typo" in lines[0]

    proc = _sam("sam.cli", *small, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "FALLING BACK TO SYNTHETIC DATA" in proc.stdout + proc.stderr
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["summary"]["dataset"] == "synthetic (fallback for cifar10)"
    assert "CIFAR-10 not found" in r["synthetic_fallback"]
    assert r["data_source"].startswith("SYNTHETIC fallback")

    proc = _sam("sam.report", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| synthetic")]
    assert rows and all(r.startswith("| synthetic (fallback for cifar10) |") for r in rows)
