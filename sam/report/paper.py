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
    """The mean of a paper cell: "2.1±<0.1" -> 2.1, "15.2 (100-84.8)" -> 15.2."""
    return float(cell.split("±")[0].split()[0])


PAPER_TABLE1: dict[tuple[str, str, str, int], tuple[float, float]] = {
    key: (paper_mean(sgd), paper_mean(sam)) for key, (sgd, sam) in PAPER_TABLE1_CELLS.items()
}  # (SGD mean, SAM mean)


# Table 4 (label noise, section 3.3): ResNet-32 on CIFAR-10 with symmetric noise on the
# training labels, 200 epochs, clean test set; test ACCURACY (%), no interval published,
# rho 0.1 (0.05 at 80%). Augmentation, batch, lr and weight decay are not stated. Its five
# rows at 20 / 40 / 60 / 80% noise, as printed (Mixup: the best alpha of 1, 8, 16, 32;
# Bootstrap: retrained from scratch on the first model's predicted labels).
PAPER_TABLE4_NOISE = (0.2, 0.4, 0.6, 0.8)
PAPER_TABLE4_ROWS = {
    "SGD": (84.8, 68.8, 48.2, 26.2),
    "Mixup": (93.0, 90.0, 83.8, 70.2),
    "Bootstrap + Mixup": (93.3, 92.0, 87.6, 72.0),
    "SAM": (95.1, 93.4, 90.5, 77.9),
    "Bootstrap + SAM": (95.4, 94.2, 91.8, 79.9),
}  # row -> accuracy per noise level of PAPER_TABLE4_NOISE
PAPER_TABLE4_ACCURACY = {
    noise: (PAPER_TABLE4_ROWS["SGD"][i], PAPER_TABLE4_ROWS["SAM"][i])
    for i, noise in enumerate(PAPER_TABLE4_NOISE)
}  # noise fraction -> (SGD, SAM)
PAPER_TABLE4_RHO = {0.2: 0.1, 0.4: 0.1, 0.6: 0.1, 0.8: 0.05}
PAPER_TABLE4_SETTING = {"dataset": "cifar10", "model": "resnet32", "epochs": 200,
                        "eval_split": "test"}  # what a run must be for its cells to match


def _error_cell(accuracy: float) -> str:
    """A Table 4 accuracy as an error cell, labelled: 84.8 -> "15.2 (100-84.8 acc)"."""
    return f"{100 - accuracy:.1f} (100-{accuracy} acc)"


PAPER_TABLE4_CELLS = {
    ("cifar10", "resnet32", noise, 200): (_error_cell(sgd), _error_cell(sam))
    for noise, (sgd, sam) in PAPER_TABLE4_ACCURACY.items()
}  # (dataset, model, label_noise, epochs) -> the (SGD, SAM) cells as error


def paper_table4_cell(row: str, noise: float, setting: dict) -> str:
    """Table 4's cell of ``row`` ("SGD", "Mixup", ...) at ``noise`` as an error cell
    ("15.2 (100-84.8 acc)"), or "" where the row, the noise level or the run's ``setting``
    (dataset, model, epochs, eval_split: PAPER_TABLE4_SETTING) is not the paper's."""
    if row not in PAPER_TABLE4_ROWS or noise not in PAPER_TABLE4_NOISE or any(
            setting.get(k) != v for k, v in PAPER_TABLE4_SETTING.items()):
        return ""
    return _error_cell(PAPER_TABLE4_ROWS[row][PAPER_TABLE4_NOISE.index(noise)])


# Table 5 (appendix B.1; hyperparameters in Table 7): SVHN (train + extra) and
# Fashion-MNIST, SAM then SGD as printed. The paper states no epoch count for these rows,
# so they match runs of any length. Its Fashion-MNIST "auto-augment" column is Cutout
# only (its words), our augment=cutout; its SVHN one AutoAugment's SVHN policy + Cutout.
_PAPER_TABLE5_TEXT = """
svhn           wrn28_10            basic        1.42±0.02  1.58±0.03
svhn           wrn28_10            autoaugment  0.99±0.01  1.14±0.04
svhn           shakeshake26_2x96d  basic        1.44±0.02  1.58±0.05
svhn           shakeshake26_2x96d  autoaugment  1.07±0.02  1.03±0.02
fashion_mnist  wrn28_10            basic        3.98±0.05  4.57±0.07
fashion_mnist  wrn28_10            cutout       3.61±0.06  3.86±0.14
fashion_mnist  shakeshake26_2x96d  basic        3.97±0.09  4.37±0.06
fashion_mnist  shakeshake26_2x96d  cutout       3.59±0.01  3.76±0.07
"""
PAPER_TABLE5_CELLS = {
    (dataset, model, augment): (sgd, sam)
    for dataset, model, augment, sam, sgd in map(str.split, _PAPER_TABLE5_TEXT.strip().splitlines())
}  # (dataset, model, augment) -> the (SGD, SAM) cells as printed


def paper_cells(key: GroupKey) -> tuple[str, str] | None:
    """The paper's (SGD, SAM) cells of a group (the values of GROUP_KEYS): Table 1 or 5 for
    clean labels, Table 4 (as error = 100 - accuracy, any augmentation) for label noise;
    only for test-set errors, whatever the fidelity (the paper's are the official code's)."""
    group = group_fields(key)
    if group["eval_split"] != "test":
        return None
    noise = group.get("label_noise") or 0.0
    if noise:
        return PAPER_TABLE4_CELLS.get((group["dataset"], group["model"], noise,
                                       group["epochs"]))
    return (PAPER_TABLE1_CELLS.get(tuple(group[k] for k in PAPER_KEYS))
            or PAPER_TABLE5_CELLS.get((group["dataset"], group["model"], group["augment"])))


# Figure 3 (left), section 4.2: WideResNet-40-10 on CIFAR-10 trained without BatchNorm,
# with and without SAM; the Hessian of the training loss by Lanczos (Ghorbani et al. 2019)
# at epochs 1, 50 and 300, lambda_max and lambda_max / lambda_5 printed on each panel. Their
# training set-up (epochs, lr, rho, images in the Hessian) is not stated.
PAPER_FIGURE3 = {
    "sgd": {1: (62.9, 2.5), 50: (12.5, 1.7), 300: (24.2, 11.4)},
    "sam": {1: (18.6, 3.6), 50: (8.9, 1.9), 300: (1.0, 2.6)},
}  # optimizer -> epoch -> (lambda_max, lambda_max / lambda_5)


def is_figure3_setting(dataset: str, model: dict | None) -> bool:
    """Whether a run is Figure 3's: CIFAR-10 and a WideResNet-40-10 without normalization
    (``model`` is the run's model config: depth 40, widen_factor 10, norm none)."""
    model = model or {}
    return (dataset == "cifar10" and str(model.get("_target_", "")).endswith("WideResNet")
            and model.get("depth") == 40 and model.get("widen_factor") == 10
            and model.get("norm") == "none")
