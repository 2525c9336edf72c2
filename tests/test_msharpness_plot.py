"""msharpness.png's data (sam.report.plots): SAM lines per m with t-intervals and best rho,
the dodge along rho, and the drawn legend and SGD band, against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sam.report.plots import _msharpness_axes, dodged, msharpness_lines

T_975_2 = 4.302652729749464  # t_{0.975, 2}, from tables
T_975_1 = 12.706204736174707  # t_{0.975, 1}


def run(
    optim: str,
    seed: int,
    err: float,
    rho: float | None = None,
    m: int | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """A complete run as sam.report reads it (batch 64)."""
    summary = {
        "dataset": "cifar10",
        "model": "resnet20",
        "augment": "none",
        "epochs": 5,
        "optim": optim,
        "rho": rho,
        "m": m,
        "seed": seed,
        "batch_size": 64,
        "variant": variant,
    }
    return {"status": "complete", "summary": summary, "final": {"test_error": err}}


def sweep() -> list[dict[str, Any]]:
    """m = 1 and m = 64 (= the batch) at rho 0.02 and 0.1, 3 seeds; SGD 2 seeds; a GSAM
    run that must not count."""
    errors = {
        (1, 0.02): (50.0, 52.0, 54.0),
        (1, 0.1): (47.0, 48.0, 52.0),
        (64, 0.02): (55.0, 55.0, 58.0),
        (64, 0.1): (60.0, 61.0, 62.0),
    }
    runs = [run("sam", s, e, rho, m) for (m, rho), es in errors.items() for s, e in enumerate(es)]
    runs.append(run("sam", 0, 10.0, 0.1, 1, variant="gsam"))
    return runs + [run("sgd", 0, 56.0), run("sgd", 1, 58.0)]


def test_lines_hold_means_intervals_and_best_rho() -> None:
    lines = msharpness_lines(sweep())
    assert [line.m for line in lines] == [1, None]  # m = batch size last, as None
    small, plain = lines
    assert small.rhos == plain.rhos == (0.02, 0.1)
    # m=1, rho 0.1: 47, 48, 52 -> mean 49, s^2 = (4 + 1 + 9) / 2 = 7 (the GSAM run left out)
    s = small.stats[1]
    assert (s.n, s.mean) == (3, pytest.approx(49.0))
    assert s.half_width == pytest.approx(T_975_2 * math.sqrt(7.0) / math.sqrt(3.0))
    # m=64, rho 0.02: 55, 55, 58 -> mean 56, s^2 = (1 + 1 + 4) / 2 = 3
    assert plain.stats[0].half_width == pytest.approx(T_975_2 * 1.0)
    rho, best = small.best
    assert rho == 0.1 and best.mean == pytest.approx(49.0)
    rho, best = plain.best
    assert rho == 0.02 and best.mean == pytest.approx(56.0)


def test_dodge_shifts_by_a_fraction_of_the_axis() -> None:
    # linear: 1.5 places x 0.015 x (0.1 - 0.02) = 0.0018
    assert dodged([0.02, 0.1], -1.5, 0.02, 0.1, log=False) == pytest.approx([0.0182, 0.0982])
    assert dodged([0.02, 0.1], 0.0, 0.02, 0.1, log=True) == pytest.approx([0.02, 0.1])
    # log: a factor 10 ** (1 x 0.015 x 2) on an axis of 2 decades
    x = dodged([0.01, 1.0], 1.0, 0.01, 1.0, log=True)
    assert x == pytest.approx([0.01 * 10**0.03, 10**0.03])


def test_axes_legend_gives_best_rho_and_sgd_band() -> None:
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    _msharpness_axes(("cifar10",), sweep(), ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    h1 = T_975_2 * math.sqrt(7.0) / math.sqrt(3.0)  # 6.57
    h_sgd = T_975_1 * math.sqrt(2.0) / math.sqrt(2.0)  # 56, 58: s = sqrt(2)
    assert sorted(labels) == [
        f"SGD: 57.00 ± {h_sgd:.2f} (n=2)",
        f"m = 1: best 49.00 ± {h1:.2f} (n=3) at rho 0.1",
        f"m = batch size (64): best 56.00 ± {T_975_2:.2f} (n=3) at rho 0.02",
    ]
    # the SGD interval is shaded: one horizontal band from 57 - h to 57 + h
    (band,) = ax.patches
    low, high = band.get_y(), band.get_y() + band.get_height()  # a Rectangle in data y
    assert (low, high) == pytest.approx((57.0 - h_sgd, 57.0 + h_sgd))
    assert ax.get_xscale() == "linear"  # rho 0.1 / 0.02 < 10
