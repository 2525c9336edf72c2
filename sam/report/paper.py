"""The paper's Table 1: Foret et al. (ICLR 2021) test errors beside our cells.

Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021 (arXiv 2010.01412v3), Table 1: test error (%), mean ± 95% interval over 5 runs.
Keys are ``(dataset, model, augment, epochs)`` as in results.json ``summary``; a cell is
shown only for errors on the official test set (eval_split "test"), beside runs of either
fidelity. The numbers come from the official code (google-research/sam): fidelity
"official" is the like-for-like comparison, "pytorch" (davda54/sam) the common port's.
"""

from __future__ import annotations

from sam.report.runs import GroupKey, group_fields

# Laid out as in the paper: CIFAR-10 SAM, SGD, then CIFAR-100 SAM, SGD. The paper's SGD
# is the better of E and 2E epochs (its section 3.1). It labels only the WRN-28-10 rows with
# epochs; the 1800 of the other rows is their reference setup (official SAM code, AutoAugment).
_PAPER_TABLE1_TEXT = """
wrn28_10                 200  basic        2.7±0.1   3.5±0.1   16.5±0.2  18.8±0.2
wrn28_10                 200  cutout       2.3±0.1   2.6±0.1   14.9±0.2  16.9±0.1
wrn28_10                 200  autoaugment  2.1±<0.1  2.3±0.1   13.6±0.2  15.8±0.2
wrn28_10                 1800 basic        2.4±0.1   3.5±0.1   16.3±0.2  19.1±0.1
wrn28_10                 1800 cutout       2.1±0.1   2.7±0.1   14.0±0.1  17.4±0.1
wrn28_10                 1800 autoaugment  1.6±0.1   2.2±<0.1  12.8±0.2  16.1±0.2
shakeshake26_2x96d       1800 basic        2.3±<0.1  2.7±0.1   15.1±0.1  17.0±0.1
shakeshake26_2x96d       1800 cutout       2.0±<0.1  2.3±0.1   14.2±0.2  15.7±0.2
shakeshake26_2x96d       1800 autoaugment  1.6±<0.1  1.9±0.1   12.8±0.1  14.1±0.2
pyramidnet272            1800 basic        2.7±0.1   4.0±0.1   14.6±0.4  19.7±0.3
pyramidnet272            1800 cutout       1.9±0.1   2.5±0.1   12.6±0.2  16.4±0.1
pyramidnet272            1800 autoaugment  1.6±0.1   1.9±0.1   11.6±0.1  14.6±0.1
pyramidnet272_shakedrop  1800 basic        2.1±0.1   2.5±0.1   13.3±0.2  14.5±0.1
pyramidnet272_shakedrop  1800 cutout       1.6±<0.1  1.9±0.1   11.3±0.1  11.8±0.2
pyramidnet272_shakedrop  1800 autoaugment  1.4±<0.1  1.6±<0.1  10.3±0.1  10.6±0.1
"""


def _parse_table1(text: str) -> dict[tuple[str, str, str, int], tuple[str, str]]:
    """(dataset, model, augment, epochs) -> the paper's (SGD, SAM) cells as printed."""
    cells = {}
    for line in text.strip().splitlines():
        model, epochs, augment, *values = line.split()
        for dataset, (sam, sgd) in zip(("cifar10", "cifar100"), (values[:2], values[2:]),
                                       strict=True):
            cells[(dataset, model, augment, int(epochs))] = (sgd, sam)
    return cells


# Key: (dataset, model, augment, epochs) as in results.json ``summary``.
PAPER_KEYS = ("dataset", "model", "augment", "epochs")
PAPER_TABLE1_CELLS = _parse_table1(_PAPER_TABLE1_TEXT)  # "3.5±0.1" as printed


def paper_mean(cell: str) -> float:
    """The mean of a paper cell: "2.1±<0.1" -> 2.1."""
    return float(cell.split("±")[0])


PAPER_TABLE1: dict[tuple[str, str, str, int], tuple[float, float]] = {
    key: (paper_mean(sgd), paper_mean(sam)) for key, (sgd, sam) in PAPER_TABLE1_CELLS.items()
}  # (SGD mean, SAM mean)


def paper_cells(key: GroupKey) -> tuple[str, str] | None:
    """The paper's Table 1 (SGD, SAM) cells of a group (the values of GROUP_KEYS): only
    for test-set errors, whatever the fidelity (the paper's are the official code's)."""
    group = group_fields(key)
    if group["eval_split"] != "test":
        return None
    return PAPER_TABLE1_CELLS.get(tuple(group[k] for k in PAPER_KEYS))
