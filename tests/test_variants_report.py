"""sam-report on a hand-made sweep of SAM variants: one row per variant beside SGD, with
intervals and the cost from the runs' own images/s (values checked by hand)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from sam.report import main
from sam.report.tables import TABLE_HEADER
from sam.results import write_json

T_975_2 = 4.302652729749464  # t_{0.975, 2}, from tables
T_975_1 = 12.706204736174707  # t_{0.975, 1}
KEY = ["cifar10", "resnet20", "basic", "10", "test", "official", "0.0", "seed"]


def write_run(root: Path, name: str, seed: int, error: float, ips: float | None,
              variant: str | None, optim: str = "sam") -> None:
    summary = {"dataset": "cifar10", "model": "resnet20", "augment": "basic", "epochs": 10,
               "optim": optim, "rho": 0.05 if optim == "sam" else None, "m": None,
               "seed": seed, "batch_size": 128, "lr": 0.1, "lam": 5e-4,
               "eval_split": "test", "fidelity": "official", "label_noise": 0.0}
    if variant is not None:  # None: a results.json from before variants were recorded
        summary["variant"] = variant
    write_json(root / name / "results.json", {
        "schema_version": 1, "status": "complete", "error": None, "summary": summary,
        "overrides": [], "config": {}, "history": [], "precision": "fp32",
        "final": {"epoch": 10, "test_error": error},
        **({} if ips is None else {"images_per_sec": ips})})


def sweep(root: Path) -> None:
    for seed, (err, ips) in enumerate([(20.0, 1000.0), (21.0, 1100.0), (22.0, 900.0)]):
        write_run(root, f"sgd/{seed}", seed, err, ips, None, optim="sgd")
    for seed, err in enumerate([18.0, 18.5, 19.0]):  # plain SAM, one recorded before variants
        write_run(root, f"sam/{seed}", seed, err, 500.0, None if seed == 0 else "sam")
    for seed, err in enumerate([17.0, 18.0]):
        write_run(root, f"gsam/{seed}", seed, err, 480.0, "gsam")
    write_run(root, "looksam/0", 0, 19.5, 800.0, "looksam")
    write_run(root, "k2/0", 0, 18.2, None, "sam ascent_steps=2")  # no throughput recorded


def rows_by_variant(text: str, header: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:len(KEY)] == KEY:
            row = dict(zip(header, cells, strict=True))
            out[row["variant"]] = row
    return out


def test_one_row_per_variant_beside_sgd_with_intervals_and_cost(tmp_path: Path,
                                                                 capsys) -> None:
    sweep(tmp_path / "runs")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    at = TABLE_HEADER.index("rho")
    header = [*TABLE_HEADER[:at], "variant", *TABLE_HEADER[at:],
              "SGD img/s", "SAM img/s", "SAM/SGD time"]
    assert "| " + " | ".join(header) + " |" in text
    rows = rows_by_variant(text, header)
    assert list(rows) == ["sam", "gsam", "looksam", "sam ascent_steps=2"]  # SAM first
    half3 = T_975_2 * 1.0 / math.sqrt(3)  # SGD: 20, 21, 22 -> s = 1
    sgd = f"21.00 ± {half3:.2f} (n=3)"
    sam_half = T_975_2 * 0.5 / math.sqrt(3)  # 18, 18.5, 19 -> s = 0.5
    gsam_half = T_975_1 * math.sqrt(0.5) / math.sqrt(2)  # 17, 18 -> s = sqrt(0.5)
    expect = {  # variant: (SAM cell, SAM - SGD, SAM img/s, time ratio = 1000 / SAM img/s)
        "sam": (f"18.50 ± {sam_half:.2f} (n=3)", "-2.50", "500", "2.00"),
        "gsam": (f"17.50 ± {gsam_half:.2f} (n=2)", "-3.50", "480", "2.08"),
        "looksam": ("19.50 (n=1)", "-1.50", "800", "1.25"),
        "sam ascent_steps=2": ("18.20 (n=1)", "-2.80", "-", "-"),
    }
    for name, (cell, diff, ips, ratio) in expect.items():
        row = rows[name]
        assert (row["rho"], row["SGD"], row["SAM"], row["SAM - SGD"]) == ("0.05", sgd, cell,
                                                                         diff), name
        assert (row["SGD img/s"], row["SAM img/s"], row["SAM/SGD time"]) == ("1000", ips,
                                                                             ratio), name
    assert "mixes" not in text  # variants are cells of their own, not a mix
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        lines = {r["variant"]: r for r in csv.DictReader(f)}
    assert float(lines["gsam"]["sam_sgd_time_ratio"]) == 1000.0 / 480.0
    assert float(lines["sam"]["sam_mean"]) == 18.5 and lines["sam"]["sgd_n"] == "3"


def test_plain_sam_sweeps_keep_the_table_without_variant_columns(tmp_path: Path,
                                                                 capsys) -> None:
    for seed in range(2):
        write_run(tmp_path, f"sgd/{seed}", seed, 20.0 + seed, 1000.0, None, optim="sgd")
        write_run(tmp_path, f"sam/{seed}", seed, 18.0 + seed, 500.0, "sam")
    assert main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| " + " | ".join(TABLE_HEADER) + " |" in text and "variant" not in text


def test_the_label_noise_best_epoch_section_reads_each_variants_own_runs(tmp_path: Path,
                                                                        capsys) -> None:
    """A GSAM row beside a SAM row: each best-epoch cell from its own runs' histories."""
    best = {"sgd": 30.0, "sam": 20.0, "gsam": 10.0}
    for name, low in best.items():
        optim, variant = ("sgd", None) if name == "sgd" else ("sam", name)
        write_run(tmp_path, name, 0, low + 5.0, 100.0, variant, optim=optim)
        path = tmp_path / name / "results.json"
        run = json.loads(path.read_text())
        run["summary"]["label_noise"] = 0.4
        run["history"] = [{"epoch": 1, "test_error": low + 9.0},
                          {"epoch": 5, "test_error": low}, {"epoch": 10, "test_error": low + 5.0}]
        write_json(path, run)
    assert main([str(tmp_path)]) == 0
    text = capsys.readouterr().out.split("## Label noise: final and best-epoch error")[1]
    header = ["dataset", "model", "label_noise", "epochs", "rho", "m", "SGD final",
              "SGD best epoch", "SAM final", "SAM best epoch"]
    rows = {}
    for line in text.splitlines():
        if line.startswith("| cifar10"):
            row = dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")),
                           strict=True))
            rows[row["rho"]] = row
    assert (rows["0.05"]["SAM final"], rows["0.05"]["SAM best epoch"]) == (
        "25.00 (n=1)", "20.00 (n=1)")  # plain SAM: its own runs
    assert (rows["0.05 (gsam)"]["SAM final"], rows["0.05 (gsam)"]["SAM best epoch"]) == (
        "15.00 (n=1)", "10.00 (n=1)")  # GSAM: its own, not plain SAM's
    assert rows["0.05 (gsam)"]["SGD best epoch"] == "30.00 (n=1)"
