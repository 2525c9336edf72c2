"""Statistics of one table cell: mean, sample std and the 95% Student-t interval.

Over a cell's n seeds x_1..x_n (final-epoch test error in %, never the best epoch):

    mean        x_bar = (1/n) sum_i x_i
    std         s = sqrt( sum_i (x_i - x_bar)^2 / (n - 1) )          (sample std, n >= 2)
    half-width  h = t_{0.975, n-1} * s / sqrt(n)                     (95% Student-t interval)

where t_{p, df} is the p-quantile of Student's t with df degrees of freedom (scipy).
With n = 1 the interval is undefined: std and half-width are None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t


def t_quantile(p: float, df: int) -> float:
    """The Student-t quantile t_{p, df}, e.g. t_{0.975, 2} = 4.3027 (two-sided 95%)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class Stats:
    """Summary of one cell's values: n, mean, sample std and 95% t half-width (see module doc).

    ``std`` and ``half_width`` are None when n = 1 (the interval is undefined)."""

    n: int
    mean: float
    std: float | None
    half_width: float | None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Stats:
    """Mean and half-width h = t_{(1+c)/2, n-1} * s / sqrt(n) of the t-interval of ``values``,
    where s = sqrt(sum (x - mean)^2 / (n - 1)) is the sample standard deviation."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Stats(1, mean, None, None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Stats(n, mean, std, half)
