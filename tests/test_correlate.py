"""sam-correlate: Kendall's tau, Jiang's granulated Kendall and the PGDL conditional mutual
information against hand-computed values, and the command end to end on a tiny population
trained by sam-train (CPU)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from helpers import console_in_process

from sam.sharpness.correlate import (
    conditional_mi,
    default_mi_size,
    granulated_kendall,
    kendall_tau,
    min_conditional_mi,
)

LOG2_3 = math.log2(3)

# ---------------------------------------------------------------------------------------
# A made-up population: hyperparameters A, B in {0, 1}, one model per point.
#   model  A B  gap  measure
#   m00    0 0   1     1
#   m01    0 1   2     2
#   m10    1 0   3     4
#   m11    1 1   4     3
# The measure orders every pair as the gap does except (m10, m11).
HP = [{"A": 0, "B": 0}, {"A": 0, "B": 1}, {"A": 1, "B": 0}, {"A": 1, "B": 1}]
GAP = [1.0, 2.0, 3.0, 4.0]
MU = [1.0, 2.0, 4.0, 3.0]


def test_kendall_tau_by_hand():
    # 6 pairs, 5 concordant, 1 discordant (m10, m11): (5 - 1) / 6
    assert kendall_tau(MU, GAP) == pytest.approx(4 / 6, abs=1e-15)
    # mu = 1 2 3 4, g = 1 3 2 4: only the pair (2, 3) disagrees; a tie in mu counts 0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6, abs=1e-15)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3, abs=1e-15)
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_kendall_tau_matches_scipy_without_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    mu = [rng.random() for _ in range(30)]
    gap = [m + rng.gauss(0, 0.3) for m in mu]
    assert kendall_tau(mu, gap) == pytest.approx(stats.kendalltau(mu, gap)[0], abs=1e-12)


def test_granulated_kendall_by_hand():
    # psi_A: models that share B and differ in A: B=0 {m00, m10}: g and mu both rise, +1;
    # B=1 {m01, m11}: +1; psi_A = 1. psi_B: A=0 {m00, m01}: +1; A=1 {m10, m11}: -1;
    # psi_B = 0. Psi = (1 + 0) / 2.
    psi, big_psi = granulated_kendall(MU, GAP, HP, ["A", "B"])
    assert psi == {"A": 1.0, "B": 0.0} and big_psi == 0.5


def _h(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_conditional_mi_by_hand():
    """PGDL's counts: every ordered pair (k, l), k = l too, is a sample of
    V_g = [g_k > g_l], V_mu = [mu_k > mu_l] (a tie or k = l is "-")."""
    # |S| = 0: one slice of 16 pairs. Each of the 5 concordant unordered pairs gives one
    # (+,+) and one (-,-); the discordant one (+,-) and (-,+); the 4 self-pairs (-,-).
    # Table (+,+) 5, (+,-) 1, (-,+) 1, (-,-) 9; p(+g) = p(+mu) = 6/16.
    i0 = (
        5 / 16 * math.log2((5 / 16) / (6 / 16) ** 2)
        + 2 / 16 * math.log2((1 / 16) / (6 / 16 * 10 / 16))
        + 9 / 16 * math.log2((9 / 16) / (10 / 16) ** 2)
    )
    assert conditional_mi(MU, GAP, HP, ()) == pytest.approx(i0 / _h(6 / 16), abs=1e-12)

    # S = {A}: slices (A_k, A_l), 4 pairs each.
    #  (0,0): pairs in {m00, m01}: (m01,m00) is (+,+), the other three (-,-):
    #         I = H(1/4) = 2 - 3/4 log2 3 (the measure determines the sign), H = H(1/4)
    #  (0,1): m0* against m1*: g and mu both lower: all (-,-): I = H = 0
    #  (1,0): all (+,+): I = H = 0
    #  (1,1): pairs in {m10, m11}: (m10,m11) (-,+), (m11,m10) (+,-), two self (-,-):
    #         I = 2 * 1/4 log2(4/3) + 1/2 log2(8/9) = 5/2 - 3/2 log2 3, H = H(1/4)
    # PGDL: mean_u I_u / mean_u H_u = (I_00 + I_11) / (2 H(1/4))
    h = 2 - 0.75 * LOG2_3
    assert _h(0.25) == pytest.approx(h, abs=1e-12)
    i_00, i_11 = h, 2.5 - 1.5 * LOG2_3
    expected_a = (i_00 + i_11) / (2 * h)
    assert conditional_mi(MU, GAP, HP, ("A",)) == pytest.approx(expected_a, abs=1e-12)

    # S = {B}: B=0 holds {m00, m10}, B=1 {m01, m11}.
    #  (0,0): (m10,m00) (+,+), three (-,-): I = H = H(1/4); (1,1) the same.
    #  (0,1): (m00,m01) (-,-), (m00,m11) (-,-), (m10,m01) (+,+), (m10,m11) (-,+):
    #         p(+g) = 1/4, p(+mu) = 1/2: I = 1/4 log2 2 + 1/4 log2(2/3) + 1/2 log2(4/3)
    #         = 3/2 - 3/4 log2 3, H = H(1/4)
    #  (1,0): (m01,m00) (+,+), (m01,m10) (-,-), (m11,m00) (+,+), (m11,m10) (+,-): by the
    #         same sums I = 3/2 - 3/4 log2 3, H = H(1/4)
    j = 1.5 - 0.75 * LOG2_3
    expected_b = (2 * h + 2 * j) / (4 * h)
    assert conditional_mi(MU, GAP, HP, ("B",)) == pytest.approx(expected_b, abs=1e-12)

    # the criterion at |S| = 1 is the smaller: conditioning on A
    mi, s = min_conditional_mi(MU, GAP, HP, ["A", "B"], 1)
    assert s == ("A",) and mi == pytest.approx(expected_a, abs=1e-12)
    assert expected_a < expected_b


def test_conditioning_on_every_hyperparameter_of_a_grid_is_undefined():
    # one model per point: each slice (theta_k, theta_l) holds one pair, H = 0 everywhere
    assert math.isnan(conditional_mi(MU, GAP, HP, ("A", "B")))
    mi, s = min_conditional_mi(MU, GAP, HP, ["A", "B"], 2)
    assert math.isnan(mi) and s == ()
    assert [default_mi_size(n) for n in (1, 2, 3, 7)] == [0, 1, 2, 2]


def _weighted_cmi_nats(mu, gap, hp, s):
    """Jiang et al.'s definition, written independently: I(V_mu; V_g | U_S) /
    H(V_g | U_S) with p(u) weights, natural logs (the ratio has no unit)."""
    n = len(mu)
    joint = Counter()
    for k in range(n):
        for l in range(n):  # noqa: E741
            u = tuple((hp[k][x], hp[l][x]) for x in s)
            joint[(u, gap[k] > gap[l], mu[k] > mu[l])] += 1
    total = n * n
    pu, pug, pum = Counter(), Counter(), Counter()
    for (u, g, m), c in joint.items():
        pu[u] += c
        pug[(u, g)] += c
        pum[(u, m)] += c
    info = sum(
        c / total * math.log(c * pu[u] / (pug[(u, g)] * pum[(u, m)]))
        for (u, g, m), c in joint.items()
    )
    cond_h = -sum(c / total * math.log(c / pu[u]) for (u, _), c in pug.items())
    return info / cond_h


def test_pgdl_score_is_jiangs_weighted_definition_on_a_balanced_grid():
    rng = random.Random(1)
    hp = [
        {"a": a, "b": b, "c": c, "seed": s}
        for a in (0, 1)
        for b in (0, 1, 2)
        for c in (0, 1)
        for s in (0, 1)
    ]
    gap = [rng.random() for _ in hp]
    mu = [g + rng.gauss(0, 0.2) for g in gap]
    for s in combinations(("a", "b", "c"), 2):
        assert conditional_mi(mu, gap, hp, s) == pytest.approx(
            _weighted_cmi_nats(mu, gap, hp, s), rel=1e-12
        )


# ---------------------------------------------------------------------------------------
# End to end: four tiny runs of the real trainer (synthetic data), one sweep

ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
TRAIN = [
    "dataset=synthetic",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "dataset.test_subset=24",  # the trainer evaluates the first 24
    "model=wrn16_8",
    "model.depth=10",
    "model.widen_factor=1",
    "optim=sgd",
    "epochs=1",
    "eval_batch_size=64",
    "amp=off",
    "deterministic=true",
]
FAST = ["images=8", "m=[1,4]", "batch_size=32"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("population") / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam.cli",
            "-m",
            *TRAIN,
            "lr=0.05,0.2",
            "batch_size=16,32",
            f"hydra.sweep.dir={root}",
        ],
        env=ENV,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def correlate(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from sam.cli.correlate import correlate_main

    return console_in_process(monkeypatch, capsys, "sam-correlate", correlate_main, *args)


def test_correlate_end_to_end_and_cached(sweep, tmp_path, monkeypatch, capsys):
    code, out, err = correlate(monkeypatch, capsys, f"runs={sweep}", *FAST)
    assert code == 0, out + err
    doc = json.loads((sweep / "correlate.json").read_text())
    assert (sweep / "correlate.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["n_runs"] == 4 and set(doc["hparams"]) == {"lr", "batch_size"}
    assert doc["settings"]["mi_size"] == 1 and set(doc["by_m"]) == {"1", "4"}
    for model in doc["models"]:
        run = json.loads((Path(model["run_dir"]) / "results.json").read_text())
        gap = model["gap"]
        # the test error re-evaluated equals the trainer's own last evaluation (fp32, eval
        # mode, same weights, the same 24 images), within one image
        assert abs(gap["test_error"] - run["final"]["test_error"]) <= 100 / 24 + 1e-9
        assert gap["gap"] == pytest.approx(gap["test_error"] - gap["train_error"])
        assert gap["train_images"] == 64 and gap["test_images"] == 24
        assert all(math.isfinite(v) for v in model["m_sharpness"].values())
    for m, scores in doc["by_m"].items():  # the statistics of the recorded values
        mu = [r["m_sharpness"][m] for r in doc["models"]]
        gap = [r["gap"]["gap"] for r in doc["models"]]
        prods = [(mu[a] - mu[b]) * (gap[a] - gap[b]) for a, b in combinations(range(4), 2)]
        concordant, discordant = sum(p > 0 for p in prods), sum(p < 0 for p in prods)
        assert scores["kendall_tau"] == pytest.approx((concordant - discordant) / 6)
    assert "m-sharpness at rho=0.05" in out and "MI |S|=1" in out

    cache = {p: p.stat().st_mtime_ns for p in sweep.rglob("correlate_measures.json")}
    assert len(cache) == 4
    code, out, _ = correlate(monkeypatch, capsys, f"runs={sweep}", *FAST)
    assert code == 0 and out.count("(cached)") == 4
    assert {p: p.stat().st_mtime_ns for p in cache} == cache
    again = json.loads((sweep / "correlate.json").read_text())
    assert again["models"] == doc["models"]

    # one more m: measured and added; the others come from the cache unchanged
    code, out, _ = correlate(
        monkeypatch,
        capsys,
        f"runs={sweep}",
        "images=8",
        "m=[1,2]",
        "batch_size=32",
        "gap_images=16",
        f"out_dir={tmp_path}",
    )
    assert code == 0 and out.count("(cached)") == 0
    more = json.loads((tmp_path / "correlate.json").read_text())
    for a, b in zip(doc["models"], more["models"], strict=True):
        assert a["m_sharpness"]["1"] == b["m_sharpness"]["1"] and "2" in b["m_sharpness"]
        assert b["gap"]["train_images"] == 16 and b["gap"]["test_error"] == a["gap"]["test_error"]


def test_bad_input_is_one_line_and_exit_2(sweep, tmp_path, monkeypatch, capsys):
    runs = sorted(p.parent for p in sweep.rglob("results.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    twins = tmp_path / "twins"  # the same run twice: nothing varies
    for name in ("a", "b"):
        shutil.copytree(runs[0], twins / name)
    no_weights = tmp_path / "no_weights"
    for i, run in enumerate(runs):
        shutil.copytree(run, no_weights / str(i), ignore=shutil.ignore_patterns("*.pt"))
    no_config = tmp_path / "no_config"
    for i, run in enumerate(runs):
        shutil.copytree(run, no_config / str(i))
    doc = json.loads((no_config / "0" / "results.json").read_text())
    del doc["config"]
    (no_config / "0" / "results.json").write_text(json.dumps(doc))
    cases = [
        ([], "nothing to correlate: pass runs="),
        ([f"runs={tmp_path / 'missing'}"], "missing is not a directory"),
        ([f"runs={empty}"], "holds no sam-train runs"),
        ([f"runs={sweep}", "min_runs=5"], "4 finished runs under"),
        ([f"runs={twins}", "min_runs=2"], "no hyperparameter varies across the 2 runs"),
        ([f"runs={no_weights}"], "holds no checkpoints/last.pt"),
        ([f"runs={no_config}"], "records no config"),
        ([f"runs={sweep}", "hparams=[epochs]"], "hparams: epochs is 1 in every one of the 4"),
        ([f"runs={sweep}", "hparams=[lr,model.nothing]"], "model.nothing is not in the config"),
        ([f"runs={sweep}", "hparams=[lr,lr]"], "name each config key once"),
        ([f"runs={sweep}", "m=[16]"], "m=16 exceeds images=8"),
        ([f"runs={sweep}", "mode=test"], "use train or eval"),
        ([f"runs={sweep}", "mi_size=3"], "mi_size=3 > the 2 hyperparameters"),
        ([f"runs=[{sweep},{twins}]"], "pass out_dir="),
    ]
    for args, expected in cases:
        fast = ["images=8", "batch_size=32"] + (
            [] if any(a.startswith("m=") for a in args) else ["m=[1,4]"]
        )
        code, out, err = correlate(monkeypatch, capsys, *fast, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, out + err)
        assert len(lines) == 1 and lines[0].startswith("sam-correlate: error:"), err
        assert expected in lines[0], (expected, lines[0])
