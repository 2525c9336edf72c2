"""How well a measure predicts the generalization gap over a population of trained models:
the statistics of Jiang et al. 2019 ("Fantastic generalization measures and where to find
them", arXiv:1912.02178) as scored by the PGDL competition (NeurIPS 2020), which the SAM
paper's Figure 3 (right) reports for m-sharpness. Plain Python (no torch).

Models k = 1..N with a measure mu_k, a gap g_k (train accuracy - test accuracy) and
hyperparameter values theta_k (a dict name -> value).

- :func:`kendall_tau`: Jiang et al.'s Kendall rank correlation,
  tau = sum_{k != l} sign(mu_k - mu_l) sign(g_k - g_l) / (N (N - 1))
  (tau-a: a tie counts 0; equal to scipy's tau-b without ties).
- :func:`granulated_kendall`: Jiang et al.'s granulated Kendall coefficient, psi_i = mean
  over the settings of the other hyperparameters of tau over the models that share them
  (so differ in hyperparameter i only); Psi = mean_i psi_i. Groups of fewer than 2 models
  are skipped.
- :func:`conditional_mi`: the conditional mutual information of the PGDL scoring program
  (``mutual_information.py``, Y. Jiang 2020), computed as it computes it:

  * every ORDERED pair (k, l) of models, k = l included, is one sample of
    V_g = [g_k > g_l] and V_mu = [mu_k > mu_l] (strict: a tie and k = l count as "-");
  * for a conditioning set S of hyperparameters the pair falls in the slice
    u = ((theta_k[s], theta_l[s]) for s in S);
  * per slice, I_u = sum p(v_g, v_mu) log2(p(v_g, v_mu) / (p(v_g) p(v_mu))) and
    H_u = -sum p(v_g) log2 p(v_g) (bits) from that slice's 2 x 2 counts;
  * the score is mean_u I_u / mean_u H_u, the means taken over slices with equal weight.

  Jiang et al. weight each slice by p(u) (sum_u p(u) I_u / sum_u p(u) H_u); on a complete
  grid with the same number of models per point, as the PGDL tasks are, the two coincide.
  PGDL fills every combination of the possible values; a slice no pair falls in (an
  incomplete population) is left out here, where PGDL would divide 0 by 0.
- :func:`min_conditional_mi`: the minimum of :func:`conditional_mi` over the conditioning
  sets of one size |S| (PGDL: |S| = 2, over every pair of distinct hyperparameters).

A score that is 0 / 0 (no slice where the gap's sign varies) is NaN.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations

Hparams = Mapping[str, Hashable]


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def kendall_tau(measure: Sequence[float], gap: Sequence[float]) -> float:
    """Jiang et al.'s Kendall rank correlation: the mean over ordered pairs k != l of
    ``sign(mu_k - mu_l) sign(g_k - g_l)``; NaN for fewer than 2 models."""
    n = len(measure)
    if n != len(gap):
        raise ValueError(f"{n} measures for {len(gap)} gaps")
    if n < 2:
        return math.nan
    s = sum(
        _sign(measure[a] - measure[b]) * _sign(gap[a] - gap[b])
        for a, b in combinations(range(n), 2)
    )
    return s / (n * (n - 1) / 2)


def granulated_kendall(
    measure: Sequence[float], gap: Sequence[float], hparams: Sequence[Hparams], names: Sequence[str]
) -> tuple[dict[str, float], float]:
    """Jiang et al.'s granulated Kendall coefficient: ``({name: psi_i}, Psi)``.

    psi_i is the mean, over the groups of models that agree on every hyperparameter of
    ``names`` but i, of :func:`kendall_tau` within the group (groups of one model are
    skipped; psi_i is NaN when every group is); Psi is the mean of the psi_i that exist."""
    psi: dict[str, float] = {}
    for name in names:
        others = [n for n in names if n != name]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for k, h in enumerate(hparams):
            groups[tuple(h[o] for o in others)].append(k)
        taus = [
            kendall_tau([measure[k] for k in ks], [gap[k] for k in ks])
            for ks in groups.values()
            if len(ks) >= 2
        ]
        psi[name] = sum(taus) / len(taus) if taus else math.nan
    found = [v for v in psi.values() if not math.isnan(v)]
    return psi, (sum(found) / len(found) if found else math.nan)


def _entropy_bits(counts: Sequence[float]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c > 0)


def _mi_bits(table: Sequence[Sequence[float]]) -> float:
    """I(row; column) in bits of a 2 x 2 table of counts."""
    total = sum(map(sum, table))
    rows = [sum(r) / total for r in table]
    cols = [sum(table[i][j] for i in range(2)) / total for j in range(2)]
    return sum(
        table[i][j] / total * math.log2(table[i][j] / total / (rows[i] * cols[j]))
        for i in range(2)
        for j in range(2)
        if table[i][j] > 0
    )


def pair_tables(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Sequence[Hparams],
    conditioning: Sequence[str],
) -> dict[tuple, list[list[int]]]:
    """The PGDL counts: slice u -> 2 x 2 table ``[v_g][v_mu]`` (index 0 = "+", 1 = "-")
    over every ordered pair (k, l), k = l included."""
    tables: dict[tuple, list[list[int]]] = {}
    n = len(measure)
    for k in range(n):
        for l in range(n):  # noqa: E741 (the paper's index)
            u = tuple((hparams[k][s], hparams[l][s]) for s in conditioning)
            t = tables.setdefault(u, [[0, 0], [0, 0]])
            t[0 if gap[k] > gap[l] else 1][0 if measure[k] > measure[l] else 1] += 1
    return tables


def conditional_mi(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Sequence[Hparams],
    conditioning: Sequence[str],
) -> float:
    """PGDL's normalized conditional mutual information of V_mu and V_g given the
    conditioning hyperparameters: ``mean_u I_u / mean_u H_u`` over the non-empty slices
    (module docstring); NaN when the gap's sign never varies within a slice."""
    tables = pair_tables(measure, gap, hparams, conditioning).values()
    mi = sum(_mi_bits(t) for t in tables) / len(tables)
    h = sum(_entropy_bits([sum(t[0]), sum(t[1])]) for t in tables) / len(tables)
    return mi / h if h > 0 else math.nan


def min_conditional_mi(
    measure: Sequence[float],
    gap: Sequence[float],
    hparams: Sequence[Hparams],
    names: Sequence[str],
    size: int,
) -> tuple[float, tuple[str, ...]]:
    """The minimum of :func:`conditional_mi` over the conditioning sets S of ``size``
    hyperparameters of ``names`` and the S that gives it (NaN scores are passed over;
    ``(nan, ())`` when every one is NaN)."""
    if not 0 <= size <= len(names):
        raise ValueError(f"|S|={size} with {len(names)} hyperparameters")
    best: tuple[float, tuple[str, ...]] = (math.nan, ())
    for s in combinations(names, size):
        v = conditional_mi(measure, gap, hparams, s)
        if not math.isnan(v) and (math.isnan(best[0]) or v < best[0]):
            best = (v, s)
    return best


def default_mi_size(n_hparams: int) -> int:
    """PGDL's |S| = 2, but at most n - 1: conditioning on every hyperparameter leaves
    only repeats of one setting (seeds) in a slice."""
    return max(0, min(2, n_hparams - 1))
