"""Reading a sweep: find and load every results.json, and read a run's settings.

``collect`` splits the runs into complete ones (tabulated) and all the others (failed,
running, diverged, unreadable, unusable, duplicate), each listed with why; none is dropped
silently. The accessors below (``group_key``, ``shard_m``, ``sam_setting``, ...) are the
one place that says how a run's ``summary`` (see :mod:`sam.results`) is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sam.results import RESULTS_FILE, comparable_config, read_json

# eval_split: "test" (the official test set) or "val" (the held-out tail of the training
# set); fidelity: "official" (trained as google-research/sam) or "pytorch" (as davda54/sam).
# results.json files from before either was recorded evaluated on the test set and
# trained as "pytorch"; label_noise: the fraction of noisy training labels (0.0 before it
# was recorded). Read a key's fields by name (``group_fields``), never by position.
GROUP_KEYS = ("dataset", "model", "augment", "epochs", "eval_split", "fidelity", "label_noise",
              "init_seed")
# what a run recorded before a key existed trained with (init_seed "seed": each run's own)
GROUP_DEFAULTS = {"eval_split": "test", "fidelity": "pytorch", "label_noise": 0.0,
                  "init_seed": "seed"}
OPTIMS = ("sgd", "sam")

GroupKey = tuple[Any, ...]  # values of GROUP_KEYS
Setting = tuple[float, int | None]  # SAM (rho, m); m None means m = batch size


def result_files(path: Path) -> list[Path]:
    """results.json files under ``path`` (recursively), or ``path`` itself if it is one."""
    if path.is_file():
        return [path] if path.name == RESULTS_FILE else []
    return sorted(p for p in path.rglob(RESULTS_FILE) if p.is_file())


def _final_test_error(run: dict[str, Any]) -> float | None:
    """``final.test_error`` of a run as a finite float, or None."""
    final = run.get("final")
    value = final.get("test_error") if isinstance(final, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def final_errors(runs: Iterable[dict[str, Any]]) -> list[float]:
    """``final.test_error`` of each run (finite for the runs ``collect`` calls complete)."""
    return [e for e in map(_final_test_error, runs) if e is not None]


def group_value(summary: dict[str, Any], key: str) -> Any:
    """``summary[key]``, or (absent or null) the value a run recorded before the key existed
    trained with: init_seed null is "seed", each run's own initial weights."""
    value = summary.get(key)
    return GROUP_DEFAULTS.get(key) if value is None else value


def _problem(run: dict[str, Any]) -> str | None:
    """Why a run that says it is complete cannot be tabulated, or None if it can."""
    summary = run.get("summary")
    if not isinstance(summary, dict):
        return "no summary"
    missing = [k for k in (*GROUP_KEYS, "optim") if group_value(summary, k) is None]
    if missing:
        return f"summary lacks {', '.join(missing)}"
    if summary["optim"] not in OPTIMS:
        return f"optim {summary['optim']!r} is neither sgd nor sam"
    if summary["optim"] == "sam" and not isinstance(summary.get("rho"), int | float):
        return "SAM run without a numeric rho"
    if _final_test_error(run) is None:
        return "no finite final.test_error"
    final_epoch = run["final"].get("epoch")
    if final_epoch is not None and final_epoch != summary["epochs"]:
        return f"final epoch {final_epoch} of {summary['epochs']}: not the last epoch"
    return None


def _load(path: Path) -> dict[str, Any]:
    """One results.json with its ``path`` added; an unreadable file gives status 'unreadable'."""
    try:
        run = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return {"path": str(path), "status": "unreadable", "error": f"{type(err).__name__}: {err}"}
    if not isinstance(run, dict):
        return {"path": str(path), "status": "unreadable", "error": "not a JSON object"}
    run["path"] = str(path)
    return run


def collect(dirs: list[Path]) -> tuple[list[dict], list[dict]]:
    """Read every results.json under ``dirs`` (recursively; a run directory itself works too).

    Returns (complete, others): ``complete`` are runs with status "complete", a usable summary
    and a finite ``final.test_error``; ``others`` are all the rest (failed, running, diverged,
    unreadable JSON, or complete but unusable, with ``error`` saying why; a second run of
    the same training config and seed gets status "duplicate"). Every dict is the
    parsed results.json plus ``path``; files reached twice through overlapping dirs count once.
    """
    complete: list[dict] = []
    others: list[dict] = []
    seen: set[Path] = set()
    for directory in dirs:
        for path in result_files(Path(directory)):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            run = _load(path)
            if run.get("status") != "complete":
                others.append(run)
                continue
            problem = _problem(run)
            if problem is None:
                complete.append(run)
            else:
                others.append({**run, "error": run.get("error") or problem})
    first: dict[str, str] = {}
    unique = []
    for run in complete:  # a run trained twice is one measurement, not two seeds
        world = (run.get("distributed") or {}).get("world_size", 1)  # not in the config
        summary = {**run["summary"], **group_fields(group_key(run))}  # defaults filled in
        identity = json.dumps([training_config(run) or summary, shard_m(run), world],
                              sort_keys=True, default=str)
        if identity in first:
            others.append({**run, "status": "duplicate",
                           "error": f"the same config and seed as {first[identity]}: "
                                    "counted once"})
        else:
            first[identity] = run["path"]
            unique.append(run)
    return unique, others


def training_config(run: dict[str, Any]) -> dict[str, Any] | None:
    """What a run trained with: its resolved config without the keys that do not change
    training (``sam.results.comparable_config``), without ``init_seed`` (a group column)
    and, for SGD, without the ``rho`` shortcut it ignores; None when results.json holds no
    config."""
    config = run.get("config")
    if not isinstance(config, dict) or not config:
        return None
    out = comparable_config(config)
    # a column of its own (GROUP_KEYS); comparable_config's init_seed = seed -> null would
    # set seed 0 apart from seeds 1, 2 of the same official cell (all init_seed 0)
    out.pop("init_seed", None)
    if run["summary"]["optim"] == "sgd":
        out.pop("rho", None)
    return out


def group_key(run: dict[str, Any]) -> GroupKey:
    """The values of GROUP_KEYS of a run (defaults filled in for older results.json)."""
    return tuple(group_value(run["summary"], k) for k in GROUP_KEYS)


def group_fields(key: GroupKey) -> dict[str, Any]:
    """A group key by name: {"dataset": ..., "epochs": ..., "fidelity": ...}; a key of
    the first GROUP_KEYS only takes GROUP_DEFAULTS for the rest (init_seed: "seed")."""
    if len(key) > len(GROUP_KEYS):
        raise ValueError(f"a group key of {len(key)} values for {len(GROUP_KEYS)} keys")
    named = dict(zip(GROUP_KEYS[: len(key)], key, strict=True))
    return {k: named.get(k, GROUP_DEFAULTS.get(k)) for k in GROUP_KEYS}


def with_fields(key: GroupKey, **changes: Any) -> GroupKey:
    """``key`` with some fields replaced by name (e.g. ``epochs=400``)."""
    unknown = set(changes) - set(GROUP_KEYS)
    if unknown:
        raise KeyError(f"not group keys: {sorted(unknown)}")
    return tuple({**group_fields(key), **changes}[k] for k in GROUP_KEYS)


def shard_m(run: dict[str, Any]) -> int | None:
    """A run's m (SAM: shard of its own eps; both optimizers: BatchNorm shards); an m
    equal to the batch size is normalised to None (= batch)."""
    summary = run["summary"]
    m = summary.get("m")
    return None if m is not None and m == summary.get("batch_size") else m


def variant(run: dict[str, Any]) -> str | None:
    """A SAM run's variant (summary.variant, e.g. "gsam", "sam ascent_steps=2"; "sam" for
    a run recorded before variants were), None for SGD."""
    summary = run["summary"]
    return (summary.get("variant") or "sam") if summary["optim"] == "sam" else None


def cell_optim(run: dict[str, Any]) -> str:
    """What a table cell holds: "sgd", or the SAM variant ("sam" for plain SAM)."""
    return variant(run) or run["summary"]["optim"]


def images_per_sec(run: dict[str, Any]) -> float | None:
    """The run's mean training throughput (results.json ``images_per_sec``), or None."""
    value = run.get("images_per_sec")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def sam_setting(run: dict[str, Any]) -> Setting:
    """(rho, m) of a SAM run (m as in ``shard_m``)."""
    return run["summary"].get("rho"), shard_m(run)


def run_precision(run: dict[str, Any]) -> str:
    """The precision a run trained in: its epochs' records in order ("fp32 then bf16" when
    it was resumed on a device that resolved amp=auto differently), else the run's own
    record, else "unrecorded" (results.json written before precision was recorded)."""
    epochs = [h.get("precision") for h in run.get("history") or []]
    seen = list(dict.fromkeys(p for p in epochs if p))
    return " then ".join(seen) if seen else run.get("precision") or "unrecorded"
