"""sam-report sections on hand-made runs: label noise (rows, Table 4, best epoch), sharpness."""

from __future__ import annotations

from pathlib import Path

from scipy import stats

from sam.report import main
from sam.report.paper import PAPER_TABLE4_ACCURACY, paper_cells
from sam.results import read_json, write_json

NOISY = {"dataset": "cifar10", "model": "resnet32", "augment": "basic", "epochs": 200,
         "eval_split": "test", "fidelity": "official"}


def write_run(root: Path, name: str, optim: str, seed: int, curve: list[float],
              label_noise: float = 0.4, **setting) -> None:
    """A complete run whose test error per epoch is ``curve`` (the last one is final)."""
    summary = {**NOISY, "optim": optim, "seed": seed, "m": None, "batch_size": 128,
               "rho": 0.1 if optim == "sam" else None, "lr": 0.1, "lam": 5e-4,
               "label_noise": label_noise, **setting}
    history = [{"epoch": e, "test_error": err, "train_loss": 1.0}
               for e, err in enumerate(curve, start=1)]
    summary["epochs"] = len(curve) if "epochs" not in setting else setting["epochs"]
    write_json(root / name / "results.json", {
        "schema_version": 1, "status": "complete", "error": None, "summary": summary,
        "overrides": [], "config": {}, "history": history,
        "final": {"epoch": summary["epochs"], "test_error": curve[-1]}, "precision": "fp32"})


def cells_of(text: str, first: str, section: str | None = None) -> list[list[str]]:
    if section is not None:
        text = text.split(section)[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first}")]


def test_table4_cells_are_errors_from_the_papers_accuracies() -> None:
    key = ("cifar10", "resnet32", "basic", 200, "test", "official", 0.4)
    assert paper_cells(key) == ("31.2 (100-68.8 acc)", "6.6 (100-93.4 acc)")
    assert paper_cells(key[:-1] + (0.8,)) == ("73.8 (100-26.2 acc)", "22.1 (100-77.9 acc)")
    assert paper_cells(key[:-1] + (0.3,)) is None  # not a level of the paper
    assert paper_cells(key[:4] + ("val", "official", 0.4)) is None
    # a noisy WRN-28-10 row must not borrow Table 1's clean-label numbers
    assert paper_cells(("cifar10", "wrn28_10", "basic", 200, "test", "official", 0.4)) is None
    assert paper_cells(("cifar10", "wrn28_10", "basic", 200, "test", "official", 0.0)) \
        == ("3.5±0.1", "2.7±0.1")
    assert set(PAPER_TABLE4_ACCURACY) == {0.2, 0.4, 0.6, 0.8}


def test_noisy_and_clean_runs_get_separate_rows_and_a_best_epoch_table(tmp_path, capsys):
    # 200-epoch curves shortened to their last 3 epochs' shape: the test error dips, then
    # rises as SGD memorises the noise
    sgd = {0: [40.0, 30.0, 36.0], 1: [42.0, 32.0, 38.0]}
    sam = {0: [38.0, 20.0, 21.0], 1: [36.0, 22.0, 23.0]}
    for seed in (0, 1):
        write_run(tmp_path, f"sgd{seed}", "sgd", seed, sgd[seed], epochs=3)
        write_run(tmp_path, f"sam{seed}", "sam", seed, sam[seed], epochs=3)
        write_run(tmp_path, f"clean_sgd{seed}", "sgd", seed, [30.0, 20.0, 10.0 + seed],
                  label_noise=0.0, epochs=3)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    h = stats.t.ppf(0.975, 1) * 2 ** 0.5 / 2 ** 0.5  # every cell: two values 2 apart
    noisy = cells_of(out, "cifar10 | resnet32 | basic | 3 | test | official | 0.4")
    clean = cells_of(out, "cifar10 | resnet32 | basic | 3 | test | official | 0.0")
    assert len(noisy) == 1 and len(clean) == 1
    assert noisy[0][8:] == ["0.1", "B=128", "fp32", f"37.00 ± {h:.2f} (n=2)", "",
                            f"22.00 ± {h:.2f} (n=2)", "", "-15.00"]
    best = cells_of(out, "cifar10", "## Label noise: final and best-epoch error")
    assert best == [["cifar10", "resnet32", "0.4", "3", "0.1", "B=128",
                     f"37.00 ± {h:.2f} (n=2)", f"31.00 ± {h:.2f} (n=2)",
                     f"22.00 ± {h:.2f} (n=2)", f"21.00 ± {h:.2f} (n=2)"]]
    assert "not a result" in out


def test_table4_values_appear_beside_a_matching_noisy_row(tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path, f"sgd{seed}", "sgd", seed, [30.0 + seed], epochs=200)
        write_run(tmp_path, f"sam{seed}", "sam", seed, [10.0 + seed], epochs=200)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = cells_of(out, "cifar10 | resnet32 | basic | 200 | test | official | 0.4")[0]
    assert row[12] == "31.2 (100-68.8 acc)" and row[14] == "6.6 (100-93.4 acc)"
    assert "Table 4" in out and "100 - accuracy" in out
    csv_row = (tmp_path / "report.csv").read_text().splitlines()[1].split(",")
    assert "31.2" in csv_row and "6.6" in csv_row  # the paper columns as numbers


def test_clean_runs_have_no_best_epoch_table(tmp_path, capsys):
    write_run(tmp_path, "sgd", "sgd", 0, [30.0, 20.0], label_noise=0.0, epochs=2)
    assert main([str(tmp_path)]) == 0
    assert "best-epoch" not in capsys.readouterr().out


def test_sharpness_table_from_the_final_epochs_measures(tmp_path, capsys):
    # lambda_max at the last epoch: SGD 40, 44 and SAM 10, 12; an earlier measured epoch
    # (value 1000) and a seed that measured nothing at its last epoch must not count
    measures = {("sgd", 0): 40.0, ("sgd", 1): 44.0, ("sam", 0): 10.0, ("sam", 1): 12.0}
    for (optim, seed), lam in measures.items():
        write_run(tmp_path, f"{optim}{seed}", optim, seed, [30.0, 20.0], label_noise=0.0,
                  epochs=2)
        path = tmp_path / f"{optim}{seed}" / "results.json"
        run = read_json(path)
        run["history"][0]["sharpness_lambda_max"] = 1000.0
        run["history"][-1].update(sharpness_lambda_max=lam, sharpness_lambda_ratio=lam / 10,
                                  sharpness_trace=10 * lam)
        write_json(path, run)
    write_run(tmp_path, "sam2", "sam", 2, [30.0, 20.0], label_noise=0.0, epochs=2)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = cells_of(out, "cifar10", "## Sharpness at the final epoch")
    h_sgd = stats.t.ppf(0.975, 1) * 8 ** 0.5 / 2 ** 0.5  # 40, 44: s = sqrt(8)
    h_sam = stats.t.ppf(0.975, 1) * 2 ** 0.5 / 2 ** 0.5  # 10, 12: s = sqrt(2)
    assert rows[0][:6] == ["cifar10", "resnet32", "0.0", "2", "0.1", "B=128"]
    assert rows[0][6:8] == [f"42.00 ± {h_sgd:.2f} (n=2)", f"11.00 ± {h_sam:.2f} (n=2)"]
    assert rows[0][8:10] == [f"4.20 ± {h_sgd / 10:.2f} (n=2)", f"1.10 ± {h_sam / 10:.2f} (n=2)"]
    assert rows[0][10].startswith("420.00") and rows[0][11].startswith("110.00")


def test_no_sharpness_table_without_measures(tmp_path, capsys):
    write_run(tmp_path, "sgd", "sgd", 0, [30.0, 20.0], label_noise=0.0, epochs=2)
    assert main([str(tmp_path)]) == 0
    assert "Sharpness at the final epoch" not in capsys.readouterr().out


def test_sharpness_png_only_when_runs_measured_it(tmp_path, capsys):
    write_run(tmp_path / "a", "sgd", "sgd", 0, [30.0, 20.0], label_noise=0.0, epochs=2)
    assert main([str(tmp_path / "a")]) == 0
    assert not (tmp_path / "a" / "sharpness.png").exists()
    path = tmp_path / "a" / "sgd" / "results.json"
    run = read_json(path)
    run["history"][-1]["sharpness_lambda_max"] = 12.5
    write_json(path, run)
    assert main([str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "sharpness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sharpness.png" in capsys.readouterr().err
