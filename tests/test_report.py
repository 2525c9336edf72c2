"""sam.report on fake sweeps of results.json files with known values, checked by hand."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from sam.report import PAPER_TABLE1, PAPER_TABLE1_CELLS, TABLE_HEADER, collect, main
from sam.report.paper import paper_cells
from sam.report.stats import t_interval, t_quantile
from sam.results import read_json, write_json

T_975_2 = 4.302652729749464  # t_{0.975, 2}, from tables
SETTING = {"dataset": "cifar10", "model": "wrn28_10", "augment": "basic", "epochs": 200}
KEY = ("cifar10", "wrn28_10", "basic", "200", "test", "pytorch", "0.0", "seed")  # SETTING's
WHERE = "/".join(KEY)  # as warnings name it
CELLS = ("SGD", "paper SGD", "SAM", "paper SAM", "SAM - SGD")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def write_run(root: Path, name: str, optim: str, seed: int, test_error: float | None, *,
              rho: float | None = None, m: int | None = None, status: str = "complete",
              error: str | None = None, epochs: int = 200, history: bool = False,
              precision: str | None = "fp32", **setting: Any) -> Path:
    """One results.json in root/name following the schema of sam.results; ``setting``
    overrides summary keys; precision None: written before precision was recorded."""
    summary = {**SETTING, "epochs": epochs, "optim": optim, "m": m, "seed": seed,
               "rho": rho if optim == "sam" else None, "batch_size": 128, "lr": 0.1,
               "lam": 5e-4, "eval_split": "test", "fidelity": "pytorch", **setting}
    rows = []
    if history and test_error is not None:  # a curve that ends at the final test error
        rows = [{"epoch": e, "test_error": test_error + 10.0 / e, "train_loss": 1.0 / e}
                for e in range(1, 4)]
    final = None if test_error is None else {"epoch": epochs, "test_error": test_error}
    run = {"schema_version": 1, "status": status, "error": error, "summary": summary,
           "overrides": [], "config": {}, "history": rows, "final": final,
           **({} if precision is None else {"precision": precision})}
    path = root / name / "results.json"
    write_json(path, run)
    return path


def edit(path: Path, drop: tuple[str, ...] = (), **top: Any) -> Path:
    """Change a written results.json: set top-level keys, remove ``drop`` from its summary."""
    run = read_json(path)
    run.update(top)
    for key in drop:
        del run["summary"][key]
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


def row_of(text: str, *first_cells: str) -> dict[str, str]:
    """The test-error table's row starting with ``first_cells``, by column name."""
    return dict(zip(TABLE_HEADER, table_row(text, *first_cells), strict=True))


def values(row: dict[str, str], *names: str) -> list[str]:
    return [row[n] for n in names]


def report(capsys: pytest.CaptureFixture[str], *args: Path | str) -> str:
    """``sam-report ARGS`` (it must exit 0): the report it printed."""
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


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
    assert status == {"failed": "failed", "running": "running", "diverged": "diverged",
                      "broken": "unreadable"}
    # a run directory itself, and overlapping directories counted once
    complete, others = collect([sweep / "sgd_0", sweep, sweep / "sgd_0" / "results.json"])
    assert (len(complete), len(others)) == (7, 4)


def test_report_table_csv_and_other_runs(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    printed = report(capsys, sweep, "--out", out)
    half = T_975_2 * 0.1 / math.sqrt(3)  # 0.2484...
    assert TABLE_HEADER == ["dataset", "model", "augment", "epochs", "eval_split", "fidelity",
                            "label_noise", "init_seed", "rho", "m", "precision", *CELLS]
    assert table_row(printed, *KEY)[len(KEY):] == [
        "0.05", "B=128", "fp32", "3.50 ± 0.25 (n=3)", "3.5 ± 0.1", "2.70 ± 0.25 (n=3)",
        "2.7 ± 0.1", "-0.80"]
    single = table_row(printed, "cifar100", "resnet18", "basic", "10", "test", "pytorch")
    # SGD's own m
    assert single[len(KEY):] == ["-", "B=128", "fp32", "5.25 (n=1)", "", "-", "", "-"]
    for name, status, error in [("failed", "failed", "CUDA OOM"), ("running", "running", ""),
                                ("diverged", "diverged", "loss is nan"),
                                ("broken", "unreadable", "JSONDecodeError")]:
        cells = table_row(printed, str(sweep / name / "results.json"))
        assert cells[1] == status and error in cells[3]
    assert (out / "report.md").read_text() == printed
    with open(out / "report.csv", newline="") as f:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(f)}
    r = rows[("cifar10", "wrn28_10")]
    assert values(r, "augment", "epochs", "eval_split", "fidelity", "rho", "m", "precision") \
        == ["basic", "200", "test", "pytorch", "0.05", "128", "fp32"]
    assert (r["sgd_n"], r["sam_n"]) == ("3", "3")
    for field, value in [("sgd_mean", 3.5), ("sgd_std", 0.1), ("sgd_half_width", half),
                         ("paper_sgd", 3.5), ("sam_mean", 2.7), ("sam_std", 0.1),
                         ("sam_half_width", half), ("paper_sam", 2.7), ("sam_minus_sgd", -0.8)]:
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
                write_run(root, f"sam/{rho}_{m}/{seed}", "sam", seed, err, rho=rho, m=m,
                          history=True)
    printed = report(capsys, root)  # OUTDIR defaults to the first DIR
    rows = [line for line in printed.splitlines() if line.startswith("| cifar10 ")]
    assert len(rows) == len(rhos) * len(ms)
    assert all("3.55 ± " in line and "(n=2)" in line for line in rows)  # SGD repeated
    # rho=0.1, m=16: errors 2.7 and 2.8, s = 0.1 / sqrt(2), h = t_{0.975,1} * s / sqrt(2)
    half = stats.t.ppf(0.975, 1) * (0.1 / math.sqrt(2)) / math.sqrt(2)
    cells = row_of(printed, *KEY, "0.1", "16")
    assert cells["SAM"] == f"2.75 ± {half:.2f} (n=2)" == "2.75 ± 0.64 (n=2)"
    assert cells["SAM - SGD"] == "-0.80"
    assert table_row(printed, *KEY, "0.01", "B=128")
    assert (root / "report.md").exists() and (root / "report.csv").exists()
    for name in ("msharpness.png", "curves.png"):
        assert (root / name).read_bytes()[:8] == PNG_MAGIC, name


def test_mixed_settings_and_repeated_seeds_are_warned(tmp_path: Path, capsys) -> None:
    root = tmp_path / "mixed"
    write_run(root, "a", "sgd", 0, 3.0)
    write_run(root, "b", "sgd", 0, 3.2, lr=0.2)
    write_run(root, "c", "sam", 1, 2.5, rho=0.05, m=128)  # m = batch size: same as m=None
    write_run(root, "d", "sam", 2, 2.7, rho=0.05)
    printed = report(capsys, root)
    assert f"{WHERE} sgd: mixes lr = 0.1, 0.2" in printed
    assert f"{WHERE} sgd: seed 0 appears more than once" in printed
    assert "cells differ" not in printed  # the mixed cell is warned once, as such
    half = stats.t.ppf(0.975, 1) * (0.2 / math.sqrt(2)) / math.sqrt(2)  # s = 0.2 / sqrt(2)
    assert values(row_of(printed, *KEY), "rho", "m", *CELLS) == [
        "0.05", "B=128", f"3.10 ± {half:.2f} (n=2)", "3.5 ± 0.1", f"2.60 ± {half:.2f} (n=2)",
        "2.7 ± 0.1", "-0.50"]


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
    printed = report(capsys, tmp_path)
    assert values(row_of(printed, *KEY, "0.05", "32"), *CELLS[:3]) == \
        ["3.00 (n=1)", "3.5 ± 0.1", "2.50 (n=1)"]
    half = stats.t.ppf(0.975, 1) * (0.1 / math.sqrt(2)) / math.sqrt(2)
    assert row_of(printed, *KEY, "-", "B=128")["SGD"] == f"3.15 ± {half:.2f} (n=2)"
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
                edit(write_run(tmp_path, f"{optim}_{rho}_{seed}", optim, seed, e, rho=rho),
                     config=config(optim, rho, seed))
    edit(write_run(tmp_path, "sam_again", "sam", 0, 2.0, rho=0.05),  # rerun, other device
         config={**config("sam", 0.05, 0), "device": "cuda"})
    edit(write_run(tmp_path, "sam_adaptive", "sam", 1, 2.1, rho=0.05),
         config=config("sam", 0.05, 1, adaptive=True))
    printed = report(capsys, tmp_path)
    assert row_of(printed, *KEY, "0.02", "B=128")["SGD"].endswith("(n=2)")  # 2 seeds, not 4
    duplicates = [line for line in printed.splitlines() if "| duplicate |" in line]
    assert len(duplicates) == 3  # 2 SGD reruns under the other rho, the SAM rerun
    assert all("counted once" in line for line in duplicates)
    assert "rho=0.05 m=B: mixes optim.adaptive = <unset>, True" in printed  # ASAM beside SAM


def test_official_seeds_sharing_init_seed_0_are_not_a_mix(tmp_path: Path, capsys) -> None:
    """fidelity=official draws every seed's weights from init_seed 0: seeds 0, 1, 2 of one
    cell train with the same init_seed, so the report warns of no mix (seed 0's init_seed
    equals its seed, which resume comparisons write as null)."""
    for seed in range(3):
        edit(write_run(tmp_path, f"sgd_{seed}", "sgd", seed, 3.4 + seed / 10, init_seed=0),
             config={"seed": seed, "init_seed": 0, "lr": 0.1, "optim": {"name": "sgd"}})
    printed = report(capsys, tmp_path)
    assert "mixes" not in printed
    assert "init_seed" in printed and "(n=3)" in printed  # one cell of 3 seeds


def test_same_config_on_another_number_of_processes_is_not_a_duplicate(tmp_path: Path,
                                                                        capsys) -> None:
    """Under torchrun each rank perturbs alone (m = the per-rank batch), which the config
    does not say: such a run is another measurement, in its own cell."""
    for name, extra in (("single", {}), ("ddp", {"distributed": {"world_size": 4}})):
        edit(write_run(tmp_path, name, "sam", 0, 2.7, rho=0.05, m=32 if name == "ddp" else None),
             config={"seed": 0, "optim": {"name": "sam", "rho": 0.05}}, **extra)
    printed = report(capsys, tmp_path)
    assert "duplicate" not in printed
    assert table_row(printed, *KEY, "0.05", "32") and table_row(printed, *KEY, "0.05", "B=128")


def test_cell_mixing_precisions_is_warned(tmp_path: Path, capsys) -> None:
    """bf16 and fp32 runs of one cell are named, so is a run resumed in another precision
    (its epochs' records) and one written before precision was recorded."""
    write_run(tmp_path, "a", "sgd", 0, 3.0, precision="bf16")
    write_run(tmp_path, "b", "sgd", 1, 3.2, precision="bf16")
    write_run(tmp_path, "c", "sam", 0, 2.6, rho=0.05, precision="bf16")
    write_run(tmp_path, "d", "sam", 1, 2.7, rho=0.05, precision=None)
    edit(write_run(tmp_path, "e", "sam", 2, 2.8, rho=0.05, precision="bf16"),  # resumed
         history=[{"epoch": 1, "precision": "fp32"}, {"epoch": 2, "precision": "bf16"}])
    printed = report(capsys, tmp_path)
    assert "sgd: mixes precision" not in printed
    assert (f"{WHERE} sam rho=0.05 m=B: mixes precision = bf16, fp32 then bf16, "
            "unrecorded") in printed
    assert row_of(printed, *KEY)["precision"] == "bf16, fp32 then bf16, unrecorded"


def test_precision_column_shows_what_the_runs_recorded(tmp_path: Path, capsys) -> None:
    """A row's precisions: one when its runs agree, both when SGD and SAM differ (each cell
    uniform, the row warned), "unrecorded" for results.json from before precision was."""
    for seed in range(2):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, 3.5)
        write_run(tmp_path, f"bf16_{seed}", "sam", seed, 2.7, rho=0.05, precision="bf16")
        write_run(tmp_path, f"fp32_{seed}", "sam", seed, 2.6, rho=0.1)
    write_run(tmp_path, "old", "sgd", 0, 9.0, epochs=10, precision=None)
    printed = report(capsys, tmp_path)
    assert row_of(printed, *KEY, "0.05")["precision"] == "bf16, fp32"
    assert row_of(printed, *KEY, "0.1")["precision"] == "fp32" and "mixes" not in printed
    # each cell is uniform, but SAM - SGD of the 0.05 row compares bf16 with fp32: said so
    assert "its cells differ in precision" in printed and "sam rho=0.05 m=B precision=bf16" \
        in printed
    assert row_of(printed, *KEY[:3], "10")["precision"] == "unrecorded"
    with open(tmp_path / "report.csv", newline="") as f:
        assert {(r["epochs"], r["rho"]): r["precision"] for r in csv.DictReader(f)} == {
            ("200", "0.05"): "bf16, fp32", ("200", "0.1"): "fp32", ("10", ""): "unrecorded"}


def test_fidelities_get_their_own_rows_each_beside_the_paper(tmp_path: Path, capsys) -> None:
    """Runs trained as google-research/sam (official) and as davda54/sam (pytorch) share no
    row, cell or SGD at 2E; the paper's (official code's) value sits beside both; results.json
    without summary.fidelity trained as pytorch (a rerun of one with it is a duplicate)."""
    for seed in range(2):
        for fid, err in (("official", 3.0), ("pytorch", 3.6)):
            write_run(tmp_path, f"{fid}_sgd_{seed}", "sgd", seed, err + seed / 5, fidelity=fid)
            write_run(tmp_path, f"{fid}_sam_{seed}", "sam", seed, err - 0.6 + seed / 5,
                      rho=0.05, fidelity=fid)
    write_run(tmp_path, "sgd_400", "sgd", 0, 3.2, epochs=400)  # pytorch
    edit(write_run(tmp_path, "old", "sam", 2, 3.1, rho=0.05), drop=("fidelity",))
    again = edit(write_run(tmp_path, "rerun", "sam", 0, 9.0, rho=0.05), drop=("fidelity",))
    printed = report(capsys, tmp_path)
    h = f"{stats.t.ppf(0.975, 1) * 0.2 / 2:.2f}"  # s = 0.2 / sqrt(2), n = 2
    assert values(row_of(printed, *KEY[:5], "official", *KEY[6:]), *CELLS) == [
        f"3.10 ± {h} (n=2)", "3.5 ± 0.1", f"2.50 ± {h} (n=2)", "2.7 ± 0.1", "-0.60"]
    assert values(row_of(printed, *KEY), *CELLS) == [
        f"3.70 ± {h} (n=2)", "3.5 ± 0.1", "3.10 ± 0.25 (n=3)", "2.7 ± 0.1", "-0.60"]
    assert "mixes" not in printed and "cells differ" not in printed
    budget = printed.split("## SGD at twice the epochs")[1].splitlines()
    assert [r.split("|")[6].strip() for r in budget if r.startswith("| c")] == ["pytorch"]
    assert table_row(printed, str(again))[1:3] == ["duplicate", f"{WHERE} sam rho=0.05 m=B seed=0"]
    assert ("Table 1 test errors from the official code, so fidelity=official is the "
            "like-for-like comparison") in " ".join(printed.split())


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
    assert paper_cells((*SETTING.values(), "test", "official", 0.0)) == ("3.5±0.1", "2.7±0.1") \
        == paper_cells((*SETTING.values(), "test", "pytorch", 0.0))
    assert paper_cells((*SETTING.values(), "val", "official", 0.0)) is None
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
    out = report(capsys, tmp_path)
    section = out.split("## SGD at twice the epochs")[1]
    row = next(line for line in section.splitlines() if line.startswith("| cifar10"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # SGD 200: mean 3.5; SGD 400: mean 3.1 (better); SAM 200: 2.7 -> 2.7 - 3.1 = -0.40
    assert cells[3:8] == ["200", "test", "pytorch", "0.0", "seed"] and cells[10] == "3.10"
    assert cells[8].startswith("3.50") and cells[9].startswith("3.10") and cells[-1] == "-0.40"


def test_validation_runs_get_their_own_rows_without_paper_numbers(tmp_path: Path,
                                                                  capsys) -> None:
    """A held-out-split error is neither compared with a test error nor with the paper."""
    for seed, err in enumerate((3.4, 3.6)):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, err)
        write_run(tmp_path, f"sam_val_{seed}", "sam", seed, err - 1.4, rho=0.05,
                  eval_split="val")
    edit(write_run(tmp_path, "sam_old", "sam", 0, 2.5, rho=0.05), drop=("eval_split",))
    printed = report(capsys, tmp_path)
    half = stats.t.ppf(0.975, 1) * 0.2 / math.sqrt(2) / math.sqrt(2)  # 1.27
    assert values(row_of(printed, *KEY), *CELLS) == [f"3.50 ± {half:.2f} (n=2)", "3.5 ± 0.1",
                                                     "2.50 (n=1)", "2.7 ± 0.1", "-1.00"]
    val_row = row_of(printed, *KEY[:4], "val", "pytorch")
    assert values(val_row, *CELLS) == ["-", "", f"2.10 ± {half:.2f} (n=2)", "", "-"]


def test_sgd_and_sam_cells_with_different_lr_are_warned(tmp_path: Path, capsys) -> None:
    for seed in range(2):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, 3.5)
        write_run(tmp_path, f"sam_{seed}", "sam", seed, 2.7, rho=0.05, lr=0.05)
    printed = report(capsys, tmp_path)
    assert (f"{WHERE}: its cells differ in lr (sgd lr=0.1; "
            "sam rho=0.05 m=B lr=0.05): SAM - SGD compares different settings") in printed
    assert "differ in lam" not in printed and "mixes" not in printed


def test_complete_run_that_stopped_early_is_not_tabulated(tmp_path: Path, capsys) -> None:
    for seed in range(2):
        write_run(tmp_path, f"sgd_{seed}", "sgd", seed, 3.5 + seed)
    short = edit(write_run(tmp_path, "short", "sgd", 2, 20.0),
                 final={"epoch": 150, "test_error": 20.0})
    printed = report(capsys, tmp_path)
    assert row_of(printed, *KEY)["SGD"].startswith("4.00 ± ")  # 3.5, 4.5; with the short 9.33
    cells = table_row(printed, str(short))
    assert cells[1] == "complete" and "final epoch 150 of 200" in cells[3]
