"""``sam-correlate``: does m-sharpness predict the generalization gap over a population of
runs? The SAM paper's Figure 3 (right), in the framework of Jiang et al. 2019.

    sam-correlate runs=outputs/fig3_population/<date> [m=[1,4,16,64,256] rho=0.05 ...]
    python -m sam.cli.correlate runs=...         # the same, without the console script

For every finished run under ``runs`` it measures the generalization gap and m-sharpness
for each m (:mod:`sam.sharpness.run_measures`, cached in the run directory), then, per m,
Kendall's tau, Jiang's granulated Kendall Psi and the PGDL conditional mutual information
between m-sharpness and the gap (:mod:`sam.sharpness.correlate`), conditioned on the
hyperparameters (``hparams``, default: the config keys that vary,
:mod:`sam.sharpness.population`). Writes ``correlate.json`` and ``correlate.png`` into
``out_dir`` (default: the sweep directory) and prints a table. Options: configs/correlate.yaml.

The paper scores the two public tasks of the PGDL competition (NeurIPS 2020); their model
populations are not downloadable here, so this command scores any population of sam-train
runs instead (``experiment=fig3_population`` trains one).
"""

from __future__ import annotations

import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sam.errors import UserError
from sam.results import atomic_write, write_json
from sam.runtime import device_name, resolve_device, versions
from sam.settings.tools import CorrelateOptions
from sam.sharpness.correlate import (
    default_mi_size,
    granulated_kendall,
    kendall_tau,
    min_conditional_mi,
)
from sam.sharpness.correlate_plot import plot_correlate
from sam.sharpness.population import find_runs, hparam_values, varying_keys
from sam.sharpness.run_measures import MeasureSettings, finite, measure_run

PROG = "sam-correlate"
OUTPUT_FILE = "correlate.json"
PLOT_FILE = "correlate.png"
SCHEMA_VERSION = 1
PGDL_NOTE = (
    "The SAM paper scores the two public tasks of the PGDL competition (NeurIPS "
    "2020); their populations cannot be downloaded here, so this scores the runs "
    "given instead: compare the trend over m, not the values."
)


def run_correlate(o: CorrelateOptions) -> dict[str, Any]:
    """Measure and score the population ``o.runs`` names; return the document also
    written to ``<out_dir>/correlate.json``."""
    t0 = time.perf_counter()
    ms = _check(o)
    dirs = [o.runs] if isinstance(o.runs, str) else list(o.runs)
    out_dir = Path(o.out_dir or dirs[0]).expanduser()
    runs, others = find_runs(dirs, PROG)
    if len(runs) < o.min_runs:
        raise UserError(
            f"{len(runs)} finished runs under {', '.join(dirs)} ({len(others)} "
            f"not finished): the statistics need min_runs={o.min_runs}; train more "
            "runs or lower min_runs"
        )
    named = _names(o.hparams)
    names = named if named is not None else varying_keys(runs)
    values = hparam_values(runs, names, required=named is not None)
    size = default_mi_size(len(names)) if o.mi_size is None else o.mi_size
    if size > len(names):
        raise UserError(
            f"mi_size={size} > the {len(names)} hyperparameters "
            f"({', '.join(names)}): lower mi_size or name more hparams"
        )
    settings = MeasureSettings(
        images=o.images,
        seed=o.seed,
        rho=o.rho,
        ascent_steps=o.ascent_steps,
        mode=o.mode,
        gap_images=o.gap_images,
    )
    device = resolve_device(o.device)
    rows = []
    for i, (run, hp) in enumerate(zip(runs, values, strict=True), 1):
        rec, measured = measure_run(
            run,
            settings,
            ms,
            batch_size=o.batch_size,
            device=device,
            data_dir=o.data_dir,
            remeasure=o.remeasure,
        )
        rows.append({"run_dir": str(run.path), "hparams": hp, **rec})
        sharp = "  ".join(f"m={m} {_fmt(v)}" for m, v in rec["m_sharpness"].items())
        print(
            f"[{i}/{len(runs)}] {run.path.name}: gap {rec['gap']['gap']:.2f}  {sharp}"
            f"{'' if measured else '  (cached)'}",
            flush=True,
        )
    by_m = {str(m): _score(rows, values, names, str(m), size) for m in ms}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "runs": dirs,
        "n_runs": len(runs),
        "not_finished": [str(p) for p, _ in others],
        "hparams": {n: sorted({str(v[n]) for v in values}) for n in names},
        "settings": {
            "m": ms,
            "rho": o.rho,
            "images": o.images,
            "seed": o.seed,
            "ascent_steps": o.ascent_steps,
            "mode": o.mode,
            "gap_images": o.gap_images,
            "mi_size": size,
        },
        "definitions": {
            "gap": "test_error - train_error (%), both re-evaluated in eval mode, un-augmented",
            "kendall_tau": "Jiang et al.: mean over ordered pairs of sign(dmu) sign(dgap)",
            "granulated_kendall": "Jiang et al.: psi_i per hyperparameter, Psi = mean_i psi_i",
            "mi": "PGDL scoring: min over |S| = mi_size of mean_u I_u / mean_u H(V_g)_u, "
            "bits, ordered pairs incl. k = l, ties as '-'",
        },
        "by_m": by_m,
        "models": rows,
        "note": PGDL_NOTE,
        "device": device_name(device),
        "wall_time_s": time.perf_counter() - t0,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {k: v for k, v in versions().items() if k in ("sam", "torch")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / OUTPUT_FILE, doc)
    atomic_write(out_dir / PLOT_FILE, lambda f: plot_correlate(by_m, size, f), binary=True)
    _print_table(doc, out_dir)
    return doc


def _check(o: CorrelateOptions) -> list[int]:
    """The m list; UserError (one line) for options that cannot be measured."""
    if not o.runs:
        raise UserError("nothing to correlate: pass runs=<sweep directory of sam-train -m>")
    if not isinstance(o.runs, str) and len(o.runs) > 1 and not o.out_dir:
        raise UserError(f"runs names {len(o.runs)} directories: pass out_dir= for correlate.json")
    ms = [o.m] if isinstance(o.m, int) else list(o.m)
    if not ms:
        raise UserError("m=[]: give shard sizes, e.g. m=[1,4,16,64,256]")
    if max(ms) > o.images:
        raise UserError(f"m={max(ms)} exceeds images={o.images}: raise images or lower m")
    names = _names(o.hparams)
    if names is not None and (not names or len(set(names)) != len(names)):
        raise UserError(
            f"hparams={list(names)}: name each config key once, or null for the keys that vary"
        )
    return list(dict.fromkeys(ms))


def _names(hparams: str | tuple[str, ...] | None) -> list[str] | None:
    return [hparams] if isinstance(hparams, str) else None if hparams is None else list(hparams)


def _score(
    rows: list[dict], values: list[dict], names: list[str], m: str, size: int
) -> dict[str, Any]:
    """Kendall's tau, Psi and the conditional MI of m-sharpness at ``m`` and the gap over
    the models whose m-sharpness is a number."""
    keep = [i for i, r in enumerate(rows) if finite(r["m_sharpness"][m])]
    if len(keep) < len(rows):
        print(
            f"{PROG}: warning: m={m}: {len(rows) - len(keep)} runs without a finite "
            "m-sharpness are left out",
            file=sys.stderr,
        )
    mu = [rows[i]["m_sharpness"][m] for i in keep]
    gap = [rows[i]["gap"]["gap"] for i in keep]
    hp = [values[i] for i in keep]
    psi, big_psi = granulated_kendall(mu, gap, hp, names)
    mi, argmin = min_conditional_mi(mu, gap, hp, names, size)
    by_size = {
        str(k): min_conditional_mi(mu, gap, hp, names, k)[0] for k in range(min(2, len(names)) + 1)
    }
    return {
        "n": len(keep),
        "kendall_tau": _num(kendall_tau(mu, gap)),
        "granulated_kendall": {"psi": {k: _num(v) for k, v in psi.items()}, "Psi": _num(big_psi)},
        "mi": _num(mi),
        "mi_argmin": list(argmin),
        "mi_by_size": {k: _num(v) for k, v in by_size.items()},
    }


def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def _print_table(doc: dict[str, Any], out_dir: Path) -> None:
    size = doc["settings"]["mi_size"]
    print(
        f"{PROG}: {doc['n_runs']} runs, hyperparameters {', '.join(doc['hparams'])}; "
        f"m-sharpness at rho={doc['settings']['rho']:g} on {doc['settings']['images']} "
        "training images"
    )
    print(f"  {'m':>5}  {'tau':>7}  {'Psi':>7}  {f'MI |S|={size}':>10}  {'MI |S|=0':>9}  argmin S")
    for m, s in doc["by_m"].items():
        print(
            f"  {m:>5}  {_fmt(s['kendall_tau'], '.3f'):>7}  "
            f"{_fmt(s['granulated_kendall']['Psi'], '.3f'):>7}  {_fmt(s['mi'], '.4f'):>10}  "
            f"{_fmt(s['mi_by_size']['0'], '.4f'):>9}  {','.join(s['mi_argmin']) or '-'}"
        )
    print(f"  wrote {out_dir / OUTPUT_FILE}, {out_dir / PLOT_FILE} ({doc['wall_time_s']:.1f} s)")
