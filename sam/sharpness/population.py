"""A population of finished sam-train runs for ``sam-correlate``: which runs a sweep holds,
and each run's hyperparameters, read from its recorded config (results.json ``config``).

A hyperparameter is a dotted key of that config (``lr``, ``batch_size``, ``model.depth``,
``augment.name``; a key naming a group, e.g. ``model``, takes the whole group as one
value). By default (:func:`varying_keys`) the hyperparameters are the config's leaves whose
value is not the same in every run, leaving out where the data is and how the run was
executed (:data:`NOT_HYPERPARAMETERS`) and the seeds, which are noise, not a choice; keys
that split the runs identically (``lr`` and ``optim.lr``) are one hyperparameter, named by
the shortest key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam.errors import UserError
from sam.results import RESULTS_FILE, read_json

# config keys that are not a choice of the training (or are its random seeds)
NOT_HYPERPARAMETERS = frozenset(
    {
        "seed",
        "init_seed",
        "dataset.noise_seed",
        "fidelity.init_seed",
        "data_dir",
        "dataset.data_dir",
        "dataset.download",
        "dataset.verify",
        "device",
        "progress",
        "eval_batch_size",
        "nan_check_every",
        "checkpoint_every_steps",
        "compile",
    }
)
NOT_HYPERPARAMETER_GROUPS = ("sharpness.",)  # the per-epoch measurement's own settings


@dataclass(frozen=True)
class Run:
    """One finished run: its directory, results.json contents and config."""

    path: Path
    results: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.results["config"]


def find_runs(dirs: Sequence[str], prog: str) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The finished (status complete) runs under ``dirs`` (each a sweep or run directory,
    searched recursively for results.json), and (directory, status) of the others."""
    files: list[Path] = []
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise UserError(
                f"runs={d} is not a directory: pass a sam-train sweep directory "
                "(outputs/multirun/<date>/<time>)"
            )
        found = sorted(root.rglob(RESULTS_FILE))
        if not found:
            raise UserError(
                f"{d} holds no sam-train runs (no {RESULTS_FILE} below it): pass "
                "the sweep directory of `sam-train -m ...`"
            )
        files += found
    runs, others = [], []
    for f in files:
        try:
            results = read_json(f)
        except (ValueError, OSError):
            others.append((f.parent, "unreadable results.json"))
            continue
        status = results.get("status") if isinstance(results, dict) else None
        if status != "complete":
            others.append((f.parent, str(status)))
            continue
        if not isinstance(results.get("config"), dict):
            raise UserError(
                f"{f} records no config: {prog} reads each run's hyperparameters "
                "and model from it; retrain the run with this sam-train"
            )
        runs.append(Run(f.parent, results))
    for path, status in others:
        print(f"{prog}: skipping {path}: not finished ({status})", file=sys.stderr)
    return runs, others


_MISSING = object()


def lookup(config: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of ``config`` (``_MISSING`` when absent)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def hashable(value: Any) -> Hashable:
    """A config value as a dict key: groups and lists as compact sorted JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def hparam_values(
    runs: Sequence[Run], names: Sequence[str], required: bool = True
) -> list[dict[str, Hashable]]:
    """Each run's value of each hyperparameter in ``names``; UserError for a key the same in
    every run, or missing from a run's config when ``required`` (else its value is None:
    a default key that only some models have, such as ``model.widen_factor``)."""
    values = []
    for run in runs:
        row = {}
        for name in names:
            v = lookup(run.config, name)
            if v is _MISSING and not required:
                v = None
            elif v is _MISSING:
                raise UserError(
                    f"hparams: {name} is not in the config of {run.path}: name "
                    "keys of results.json's config (lr, batch_size, model.depth)"
                )
            row[name] = hashable(v)
        values.append(row)
    for name in names:
        seen = {row[name] for row in values}
        if len(seen) == 1:
            raise UserError(
                f"hparams: {name} is {next(iter(seen))} in every one of the "
                f"{len(runs)} runs: the statistics condition on hyperparameters "
                "that vary; drop it or add runs that vary it"
            )
    return values


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _leaves(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: node}


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """The default hyperparameters: the config leaves that vary across ``runs`` (module
    docstring), one key per distinct split of the runs, shortest key first."""
    leaves = [_leaves(r.config) for r in runs]
    keys = sorted({k for leaf in leaves for k in leaf}, key=lambda k: (k.count("."), len(k), k))
    chosen: list[str] = []
    splits: set[tuple] = set()
    for key in keys:
        if key in NOT_HYPERPARAMETERS or key.startswith(NOT_HYPERPARAMETER_GROUPS):
            continue
        values = [hashable(leaf.get(key)) for leaf in leaves]
        if len(set(values)) < 2:
            continue
        first: dict[Hashable, int] = {}
        split = tuple(first.setdefault(v, len(first)) for v in values)
        if split not in splits:
            splits.add(split)
            chosen.append(key)
    if not chosen:
        raise UserError(
            f"no hyperparameter varies across the {len(runs)} runs: the "
            "statistics compare runs trained differently; sweep lr, batch_size, "
            "model.depth ... (experiment=fig3_population)"
        )
    return chosen
