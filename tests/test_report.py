"""sam.report on fake sweeps of results.json files with known values, checked by hand."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from sam.report import (
    PAPER_TABLE1,
    PAPER_TABLE1_CELLS,
    collect,
    main,
    t_interval,
    t_quantile,
)
from sam.results import read_json, write_json

T_975_2 = 4.302652729749464  # t_{0.975, 2}, from tables
SETTING = {"dataset": "cifar10", "model": "wrn28_10", "augment": "basic", "epochs": 200}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def write_run(
    root: Path,
    name: str,
    optim: str,
    seed: int,
    test_error: float | None,
    *,
    rho: float | None = None,
    m: int | None = None,
    status: str = "complete",
    error: str | None = None,
    epochs: int = 200,
    history: bool = False,
    precision: str | None = None,
    **setting: Any,
) -> Path:
    """One results.json in root/name following the schema of sam.results."""
    summary = {
        **SETTING,
        "epochs": epochs,
        "optim": optim,
        "rho": rho if optim == "sam" else None,
        "m": m,
        "seed": seed,
        "batch_size": 128,
        "lr": 0.1,
        "lam": 5e-4,
        "eval_split": "test",
        **setting,
    }
    rows = []
    if history and test_error is not None:  # a curve that ends at the final test error
        rows = [
            {"epoch": e, "test_error": test_error + 10.0 / e, "train_loss": 1.0 / e}
            for e in range(1, 4)
        ]
    final = None if test_error is None else {"epoch": epochs, "test_error": test_error}
    run = {
        "schema_version": 1,
        "status": status,
        "error": error,
        "summary": summary,
        "overrides": [],
        "config": {},
        "history": rows,
        "final": final,
    }
    if precision is not None:
        run["precision"] = precision
    path = root / name / "results.json"
    write_json(path, run)
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """SGD 3.4/3.6/3.5 and SAM 2.6/2.8/2.7 on the paper's cifar10 setting, a single-seed
    group, a failed, a running and a diverged run, and one unreadable file."""
    root = tmp_path / "sweep"
    for seed, err in enumerate([3.4, 3.6, 3.5]):
        write_run(root, f"sgd_{seed}", "sgd", seed, err)
    for seed, err in enumerate([2.6, 2.8, 2.7]):
        write_run(root, f"nested/sam_{seed}", "sam", seed, err, rho=0.05)
    write_run(root, "single", "sgd", 0, 5.25, dataset="cifar100", model="resnet18", epochs=10)
    write_run(root, "failed", "sam", 7, None, rho=0.05, status="failed", error="CUDA OOM")
    write_run(root, "running", "sgd", 8, None, status="running")
    write_run(root, "diverged", "sam", 9, None, rho=5.0, status="diverged", error="loss is nan")
    bad = root / "broken" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"status": "complete", "summ')
    return root


def table_row(text: str, *first_cells: str) -> list[str]:
    """Cells of the Markdown table row starting with ``first_cells``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row {first_cells} in\n{text}")


def test_t_quantile_table_values() -> None:
    """Two-sided 95% quantiles t_{0.975, df} from printed t tables (3 decimals), so a wrong
    call (the one-sided ppf(0.95), p and df swapped) fails; t_{0.95, 4} for contrast."""
    for df, table in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert round(t_quantile(0.975, df), 3) == table, df
    assert t_quantile(0.975, 2) == pytest.approx(T_975_2, abs=1e-12)
    assert round(t_quantile(0.95, 4), 3) == 2.132  # one-sided 95%: not the interval's
    assert t_quantile(0.025, 5) == pytest.approx(-t_quantile(0.975, 5))
    for p, df in [(0.0, 3), (1.0, 3), (0.975, 0), (0.975, 1.5)]:
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_t_interval_by_hand() -> None:
    s = t_interval([3.4, 3.6, 3.5])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(3.5), pytest.approx(0.1))
    assert s.half_width == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))
    one = t_interval([2.0])
    assert (one.n, one.mean, one.std, one.half_width) == (1, 2.0, None, None)


def test_collect_separates_complete_and_others(sweep: Path) -> None:
    complete, others = collect([sweep])
    assert len(complete) == 7
    status = {Path(r["path"]).parent.name: r["status"] for r in others}
    assert status == {
        "failed": "failed",
        "running": "running",
        "diverged": "diverged",
        "broken": "unreadable",
    }
    # a run directory itself, and overlapping directories counted once
    complete, others = collect([sweep / "sgd_0", sweep, sweep / "sgd_0" / "results.json"])
    assert (len(complete), len(others)) == (7, 4)


def test_report_table_csv_and_other_runs(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    half = T_975_2 * 0.1 / math.sqrt(3)  # 0.2484...

    row = table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test")
    assert row[5:] == [
        "0.05",
        "B=128",
        f"3.50 ± {half:.2f} (n=3)",
        "3.5 ± 0.1",
        f"2.70 ± {half:.2f} (n=3)",
        "2.7 ± 0.1",
        "-0.80",
    ]
    assert f"{half:.2f}" == "0.25"
    single = table_row(printed, "cifar100", "resnet18", "basic", "10", "test")
    assert single[5:] == ["-", "B=128", "5.25 (n=1)", "", "-", "", "-"]  # SGD's own m

    for name, status, error in [
        ("failed", "failed", "CUDA OOM"),
        ("running", "running", ""),
        ("diverged", "diverged", "loss is nan"),
        ("broken", "unreadable", "JSONDecodeError"),
    ]:
        cells = table_row(printed, str(sweep / name / "results.json"))
        assert cells[1] == status and error in cells[3]
    assert (out / "report.md").read_text() == printed

    with open(out / "report.csv", newline="") as f:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(f)}
    r = rows[("cifar10", "wrn28_10")]
    assert (r["augment"], r["epochs"], r["eval_split"], r["rho"], r["m"]) == \
        ("basic", "200", "test", "0.05", "128")
    assert (r["sgd_n"], r["sam_n"]) == ("3", "3")
    for field, value in [
        ("sgd_mean", 3.5),
        ("sgd_std", 0.1),
        ("sgd_half_width", half),
        ("paper_sgd", 3.5),
        ("sam_mean", 2.7),
        ("sam_std", 0.1),
        ("sam_half_width", half),
        ("paper_sam", 2.7),
        ("sam_minus_sgd", -0.8),
    ]:
        assert float(r[field]) == pytest.approx(value, abs=1e-9), field
    s = rows[("cifar100", "resnet18")]
    assert (s["sgd_n"], s["sgd_mean"], s["sgd_half_width"], s["sam_n"]) == ("1", "5.25", "", "")
    # no history and a single rho: no plots, and no failure
    assert not (out / "msharpness.png").exists() and not (out / "curves.png").exists()


def test_msharpness_sweep_writes_plots(tmp_path: Path, capsys) -> None:
    root = tmp_path / "msharp"
    rhos, ms = [0.01, 0.05, 0.1], [None, 16, 64]
    for seed in range(2):
        write_run(root, f"sgd/{seed}", "sgd", seed, 3.5 + 0.1 * seed, history=True)
        for i, rho in enumerate(rhos):
            for j, m in enumerate(ms):
                err = 3.0 - 0.1 * i - 0.1 * j + 0.1 * seed
                path = f"sam/{rho}_{m}/{seed}"
                write_run(root, path, "sam", seed, err, rho=rho, m=m, history=True)
    assert main([str(root)]) == 0  # OUTDIR defaults to the first DIR
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| cifar10 ")]
    assert len(rows) == len(rhos) * len(ms)
    assert all("3.55 ± " in line and "(n=2)" in line for line in rows)  # SGD repeated
    # rho=0.1, m=16: errors 2.7 and 2.8, s = 0.1 / sqrt(2), h = t_{0.975,1} * s / sqrt(2)
    half = stats.t.ppf(0.975, 1) * (0.1 / math.sqrt(2)) / math.sqrt(2)
    cells = table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "0.1", "16")
    assert cells[9] == f"2.75 ± {half:.2f} (n=2)" == "2.75 ± 0.64 (n=2)"
    assert cells[11] == "-0.80"
    assert table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "0.01", "B=128")
    for name in ("msharpness.png", "curves.png", "report.md", "report.csv"):
        assert (root / name).exists(), name
    for name in ("msharpness.png", "curves.png"):
        assert (root / name).read_bytes()[:8] == PNG_MAGIC


def test_mixed_settings_and_repeated_seeds_are_warned(tmp_path: Path, capsys) -> None:
    root = tmp_path / "mixed"
    write_run(root, "a", "sgd", 0, 3.0)
    write_run(root, "b", "sgd", 0, 3.2, lr=0.2)
    write_run(root, "c", "sam", 1, 2.5, rho=0.05, m=128)  # m = batch size: same as m=None
    write_run(root, "d", "sam", 2, 2.7, rho=0.05)
    assert main([str(root)]) == 0
    printed = capsys.readouterr().out
    assert "cifar10/wrn28_10/basic/200/test sgd: mixes lr = 0.1, 0.2" in printed
    assert "cifar10/wrn28_10/basic/200/test sgd: seed 0 appears more than once" in printed
    assert "cells differ" not in printed  # the mixed cell is warned once, as such
    row = table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test")
    half = stats.t.ppf(0.975, 1) * (0.2 / math.sqrt(2)) / math.sqrt(2)  # s = 0.2 / sqrt(2)
    assert row[5:] == [
        "0.05",
        "B=128",
        f"3.10 ± {half:.2f} (n=2)",
        "3.5 ± 0.1",
        f"2.60 ± {half:.2f} (n=2)",
        "2.7 ± 0.1",
        "-0.50",
    ]


def test_missing_or_empty_directories(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and err.count("\n") == 1
    assert not (empty / "report.md").exists()


def test_sgd_with_other_batchnorm_shards_is_another_baseline(tmp_path: Path, capsys) -> None:
    """SGD with m=32 (8 accelerators' BatchNorm, as the paper) and with m = B are not the
    same baseline: two SGD rows, each beside the SAM runs of its m; m = batch size counts
    as m = B."""
    write_run(tmp_path, "a", "sgd", 0, 3.0, m=32)
    write_run(tmp_path, "b", "sgd", 1, 3.2)
    write_run(tmp_path, "c", "sgd", 2, 3.1, m=128)
    write_run(tmp_path, "d", "sam", 0, 2.5, rho=0.05, m=32)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "0.05", "32")[7:10] \
        == ["3.00 (n=1)", "3.5 ± 0.1", "2.50 (n=1)"]
    half = stats.t.ppf(0.975, 1) * (0.1 / math.sqrt(2)) / math.sqrt(2)
    assert table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "-", "B=128")[7] \
        == f"3.15 ± {half:.2f} (n=2)"
    assert "mixes" not in printed


def test_sgd_runs_of_a_rho_sweep_count_once(tmp_path: Path, capsys) -> None:
    """`-m optim=sgd,sam rho=0.02,0.05 seed=0,1` trains each SGD seed twice (SGD ignores
    rho): one measurement per seed, the second listed as a duplicate; likewise a SAM run
    trained twice. Runs that differ in any training setting are not duplicates."""
    def config(optim: str, rho: float, seed: int, **optim_extra: Any) -> dict:
        return {"rho": rho, "seed": seed, "device": "cpu", "lr": 0.1,
                "optim": {"name": optim, "lr": 0.1, **({"rho": rho} if optim == "sam" else {}),
                          **optim_extra}}
    for rho in (0.02, 0.05):
        for seed, err in enumerate((3.4, 3.6)):
            for optim, e in (("sgd", err), ("sam", err - 0.8)):
                path = write_run(tmp_path, f"{optim}_{rho}_{seed}", optim, seed, e, rho=rho)
                run = read_json(path)
                run["config"] = config(optim, rho, seed)
                write_json(path, run)
    again = write_run(tmp_path, "sam_again", "sam", 0, 2.0, rho=0.05)  # rerun, other device
    run = read_json(again)
    run["config"] = {**config("sam", 0.05, 0), "device": "cuda"}
    write_json(again, run)
    asam = write_run(tmp_path, "sam_adaptive", "sam", 1, 2.1, rho=0.05)
    run = read_json(asam)
    run["config"] = config("sam", 0.05, 1, adaptive=True)
    write_json(asam, run)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    row = table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "0.02", "B=128")
    assert row[7].endswith("(n=2)")  # SGD: 2 seeds, not 4 runs
    duplicates = [line for line in printed.splitlines() if "| duplicate |" in line]
    assert len(duplicates) == 3  # 2 SGD reruns under the other rho, the SAM rerun
    assert all("counted once" in line for line in duplicates)
    assert "rho=0.05 m=B: mixes optim.adaptive = <unset>, True" in printed  # ASAM beside SAM


def test_same_config_on_another_number_of_processes_is_not_a_duplicate(tmp_path: Path,
                                                                        capsys) -> None:
    """Under torchrun each rank perturbs alone (m = the per-rank batch), which the config
    does not say: such a run is another measurement, in its own cell."""
    for name, extra in (("single", {}), ("ddp", {"distributed": {"world_size": 4}})):
        path = write_run(tmp_path, name, "sam", 0, 2.7, rho=0.05,
                         m=32 if name == "ddp" else None)
        run = read_json(path)
        run.update(config={"seed": 0, "optim": {"name": "sam", "rho": 0.05}}, **extra)
        write_json(path, run)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "duplicate" not in printed
    assert table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "0.05", "32")
    assert table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test", "0.05", "B=128")


def test_cell_mixing_precisions_is_warned(tmp_path: Path, capsys) -> None:
    """bf16 and fp32 runs of one cell are named, so is a run resumed in another precision
    (its epochs' records) and one written before precision was recorded."""
    write_run(tmp_path, "a", "sgd", 0, 3.0, precision="bf16")
    write_run(tmp_path, "b", "sgd", 1, 3.2, precision="bf16")
    write_run(tmp_path, "c", "sam", 0, 2.6, rho=0.05, precision="bf16")
    write_run(tmp_path, "d", "sam", 1, 2.7, rho=0.05)
    resumed = write_run(tmp_path, "e", "sam", 2, 2.8, rho=0.05, precision="bf16")
    run = read_json(resumed)
    run["history"] = [{"epoch": 1, "precision": "fp32"}, {"epoch": 2, "precision": "bf16"}]
    write_json(resumed, run)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "sgd: mixes precision" not in printed
    assert ("cifar10/wrn28_10/basic/200/test sam rho=0.05 m=B: mixes precision = bf16, "
            "fp32 then bf16, unrecorded") in printed


def test_paper_table1_values() -> None:
    """Spot checks against the paper's Table 1 (SGD, SAM), one per row and corner."""
    assert PAPER_TABLE1[("cifar10", "wrn28_10", "basic", 200)] == (3.5, 2.7)
    assert PAPER_TABLE1[("cifar100", "wrn28_10", "autoaugment", 200)] == (15.8, 13.6)
    assert PAPER_TABLE1[("cifar100", "wrn28_10", "cutout", 1800)] == (17.4, 14.0)
    assert PAPER_TABLE1[("cifar10", "shakeshake26_2x96d", "autoaugment", 1800)] == (1.9, 1.6)
    assert PAPER_TABLE1[("cifar100", "pyramidnet272", "basic", 1800)] == (19.7, 14.6)
    assert PAPER_TABLE1[("cifar10", "pyramidnet272_shakedrop", "autoaugment", 1800)] == (1.6, 1.4)
    assert PAPER_TABLE1_CELLS[("cifar10", "wrn28_10", "autoaugment", 200)] == ("2.3±0.1",
                                                                             "2.1±<0.1")
    assert len(PAPER_TABLE1) == 2 * 15  # CIFAR-10/100 x 5 models/budgets x 3 augmentations
    # every recipe's model name is one the table knows
    models = {key[1] for key in PAPER_TABLE1}
    for name in ("wrn28_10", "shakeshake26_2x96d", "pyramidnet272", "pyramidnet272_shakedrop"):
        assert (REPO / "configs" / "model" / f"{name}.yaml").is_file() and name in models


def test_sgd_at_twice_the_epochs_is_compared(tmp_path: Path, capsys) -> None:
    """Paper: SGD's better budget of E and 2E epochs; SAM(E) is compared with it."""
    for seed, err in enumerate((3.4, 3.6)):
        write_run(tmp_path, f"sgd200_{seed}", "sgd", seed, err)
        write_run(tmp_path, f"sgd400_{seed}", "sgd", seed, err - 0.4, epochs=400)
        write_run(tmp_path, f"sam200_{seed}", "sam", seed, err - 0.8, rho=0.05)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    section = out.split("## SGD at twice the epochs")[1]
    row = next(line for line in section.splitlines() if line.startswith("| cifar10"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # SGD 200: mean 3.5; SGD 400: mean 3.1 (better); SAM 200: 2.7 -> 2.7 - 3.1 = -0.40
    assert cells[3:5] == ["200", "test"] and cells[7] == "3.10" and cells[-1] == "-0.40"
    assert cells[5].startswith("3.50") and cells[6].startswith("3.10")


def test_validation_runs_get_their_own_rows_without_paper_numbers(tmp_path: Path,
                                                                  capsys) -> None:
    """A held-out-split error is neither compared with a test error nor with the paper."""
    for seed, err in enumerate((3.4, 3.6)):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, err)
        write_run(tmp_path, f"sam_val_{seed}", "sam", seed, err - 1.4, rho=0.05,
                  eval_split="val")
    old = write_run(tmp_path, "sam_old", "sam", 0, 2.5, rho=0.05)  # before eval_split
    run = read_json(old)
    del run["summary"]["eval_split"]
    write_json(old, run)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    test_row = table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test")
    half = stats.t.ppf(0.975, 1) * 0.2 / math.sqrt(2) / math.sqrt(2)  # 1.27
    assert test_row[7:] == [f"3.50 ± {half:.2f} (n=2)", "3.5 ± 0.1", "2.50 (n=1)",
                            "2.7 ± 0.1", "-1.00"]
    val_row = table_row(printed, "cifar10", "wrn28_10", "basic", "200", "val")
    assert val_row[7:] == ["-", "", f"2.10 ± {half:.2f} (n=2)", "", "-"]


def test_sgd_and_sam_cells_with_different_lr_are_warned(tmp_path: Path, capsys) -> None:
    for seed in range(2):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, 3.5)
        write_run(tmp_path, f"sam_{seed}", "sam", seed, 2.7, rho=0.05, lr=0.05)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert ("cifar10/wrn28_10/basic/200/test: its cells differ in lr (sgd lr=0.1; "
            "sam rho=0.05 m=B lr=0.05): SAM - SGD compares different settings") in printed
    assert "differ in lam" not in printed and "mixes" not in printed


def test_complete_run_that_stopped_early_is_not_tabulated(tmp_path: Path, capsys) -> None:
    for seed in range(2):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, 3.5 + seed)
    short = write_run(tmp_path, "short", "sgd", 2, 20.0)
    run = read_json(short)
    run["final"]["epoch"] = 150
    write_json(short, run)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert table_row(printed, "cifar10", "wrn28_10", "basic", "200", "test")[7].startswith(
        "4.00 ± ")  # 3.5 and 4.5; with the 20.0 of the short run it would be 9.33
    cells = table_row(printed, str(short))
    assert cells[1] == "complete" and "final epoch 150 of 200" in cells[3]
