"""``sam-report``: tables and plots from the results.json files of a sweep.

Usage: ``sam-report DIR [DIR ...] [--out OUTDIR]`` (OUTDIR defaults to the first DIR).

Every results.json under the given directories is read (see :mod:`sam.results` for the
schema). Complete runs are grouped by ``(dataset, model, augment, epochs, eval_split,
fidelity)`` (eval_split "val" = the held-out training tail: no paper value beside it;
fidelity "official" = trained as google-research/sam, the code behind the paper's numbers,
"pytorch" = as davda54/sam, which results.json files without the key trained as); each gives
one table row per SAM setting ``(rho, m)``, beside the SGD runs of the same m (BatchNorm
shards change SGD too; when all SGD runs share one other m, those), plus a row for SGD runs
of an m no SAM row uses; the paper's Table 1 value beside each cell where the setting
matches on the test split (either fidelity), and the difference SAM - SGD of the means. A
run trained twice with the same config and seed (SGD in a sweep over rho, a rerun) counts
once. Every other run (failed, running, diverged, unreadable, duplicate) is listed with its
path, status and error: none is dropped silently. A cell reads ``mean ± h (n=k)``: the
final-epoch test error over k seeds with the half-width h of its 95% Student-t interval
(never the best epoch); a row's precision column names what its runs trained in.

Modules, in import order: `stats` (mean, std, t-interval), `runs` (finding, loading and
reading results.json), `paper` (the paper's Table 1), `rows` (grouping into cells and rows),
`tables` (Markdown and CSV text), `checks` (warnings about unlike runs in a cell or row),
`plots` (msharpness.png, curves.png), `spectrum` (the Hessian spectrum per epoch, Figure 3
left: spectrum.png and its table), `command` (argparse ``main``, ``render_report``).
The report imports nothing of the project but :mod:`sam.results`.
"""

from sam.report.checks import UNIFORM_KEYS, warnings_for
from sam.report.command import main, render_report
from sam.report.paper import (
    PAPER_KEYS,
    PAPER_TABLE1,
    PAPER_TABLE1_CELLS,
    paper_cells,
    paper_mean,
)
from sam.report.plots import plot_curves, plot_msharpness
from sam.report.rows import Row, build_rows, precisions_of
from sam.report.runs import (
    GROUP_DEFAULTS,
    GROUP_KEYS,
    OPTIMS,
    GroupKey,
    Setting,
    collect,
    group_fields,
    group_key,
    group_value,
    run_precision,
    sam_setting,
    shard_m,
    training_config,
    with_fields,
)
from sam.report.spectrum import plot_spectrum, spectrum_lines
from sam.report.stats import Stats, t_interval, t_quantile
from sam.report.tables import (
    CSV_FIELDS,
    TABLE_HEADER,
    csv_text,
    format_cell,
    others_lines,
    precision_text,
    sgd_budget_lines,
    table_lines,
)

__all__ = [
    "CSV_FIELDS",
    "GROUP_DEFAULTS",
    "GROUP_KEYS",
    "OPTIMS",
    "PAPER_KEYS",
    "PAPER_TABLE1",
    "PAPER_TABLE1_CELLS",
    "TABLE_HEADER",
    "UNIFORM_KEYS",
    "GroupKey",
    "Row",
    "Setting",
    "Stats",
    "build_rows",
    "collect",
    "csv_text",
    "format_cell",
    "group_fields",
    "group_key",
    "group_value",
    "main",
    "others_lines",
    "paper_cells",
    "paper_mean",
    "plot_curves",
    "plot_msharpness",
    "plot_spectrum",
    "precision_text",
    "precisions_of",
    "render_report",
    "run_precision",
    "sam_setting",
    "sgd_budget_lines",
    "shard_m",
    "spectrum_lines",
    "t_interval",
    "t_quantile",
    "table_lines",
    "training_config",
    "warnings_for",
    "with_fields",
]
