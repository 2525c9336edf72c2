"""The results.json schema and atomic writes (shared by the trainer and the report).

results.json of one run (errors are percentages, 0-100):

    schema_version  1
    status          "running" | "complete" | "failed" | "diverged" | "preempted" (stopped
                    by a signal after a checkpoint: rerunning resumes it)
    error           null or the one-line reason of a failure
    diverged_at     {epoch, step} where the loss became NaN/inf (status "diverged" only)
    summary         {dataset, model, augment, optim, rho, m, epochs, seed, batch_size,
                     lr, lam, eval_split, fidelity, label_noise, variant, init_seed}: the
                     keys a report groups runs by (variant: the SAM variant's name, e.g.
                     "sam", "gsam", "sam ascent_steps=2"; null for SGD; absent before:
                     "sam"; init_seed: the initial weights' seed, null = each run's seed,
                     absent before: null; mixup_alpha: 0.0 = no Mixup; bootstrap: the run
                     whose predicted labels it trained on, or null; both absent before:
                     0.0 / null)
    overrides       the Hydra task overrides of the run
    config          the fully resolved config
    history         one dict per finished epoch: epoch, train_loss, train_error,
                    test_loss, test_error, lr (after the epoch's last scheduler
                    step: the next epoch's starting lr), images_per_sec, epoch_time_s,
                    precision (bf16, fp16 or fp32: what amp resolved to); with
                    sharpness.every > 0 also sharpness_lambda_max, sharpness_lambda_ratio,
                    sharpness_trace, sharpness_trace_stderr, sharpness_m_sharpness,
                    sharpness_time_s on the measured epochs (sam/sharpness/measurement.py)
    label_noise     null, or the noisy training labels' record: {fraction, mode, seed,
                    chosen, changed, hash} (sam/data/label_noise.py; summary.label_noise
                    holds the fraction, 0.0 for clean labels)
    bootstrap       null, or where the training labels came from (bootstrap=):
                    {source, run, epoch, kind, hash, replaced_hash, images, changed, ...}
                    (sam/train/bootstrap.py)
    data_source     where the images came from (the torchvision folder and md5 check, or
                    the synthetic generator; subset, validation split, noisy labels)
    synthetic_fallback  null, or why synthetic data replaced an absent dataset
                    (dataset.fallback_synthetic, the demo offline); summary.dataset is
                    then "synthetic (fallback for <dataset>)"
    final           the last epoch's metrics (never the best epoch) or null
    wall_time_s, images_per_sec, device, precision (of the latest session), versions,
                    started_at, updated_at
    fp32_precision  {setting, conv, matmul}: fidelity.fp32_precision and what convolutions
                    and matmuls computed in (tf32, fp32, or the amp dtype) in the latest
                    session (absent before: torch's defaults)
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sam.errors import UserError

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1

# config keys that may differ when a run directory is resumed (they do not change what
# is trained)
RESUME_FREE_KEYS = ("device", "progress", "data_dir", "compile", "nan_check_every",
                    "checkpoint_every_steps",
                    "eval_batch_size", "dataset.data_dir", "dataset.download",
                    "dataset.verify", "dataset.fallback_synthetic", "sharpness",
                    "logger",  # where a run is logged: trackers may change on resume
                    # like amp=auto, a device's precision; results.json records what it was
                    "fidelity.fp32_precision",
                    # compared where they act: the top-level init_seed and dataset.stats
                    "fidelity.init_seed", "fidelity.dataset_stats",
                    # optim.base decides the class now (and optim.base is compared)
                    "optim.base_optimizer")
# config keys added since runs were first recorded, with the value that a config
# recorded before the key existed trained with
KEYS_ADDED = {
    "augment.pad_mode": "zero",
    # the fidelity group (configs/fidelity): before it, runs trained as fidelity=pytorch
    "fidelity": {"name": "pytorch", "wd_mode": "base", "max_grad_norm": None,
                 "model_style": "pytorch", "cutout_per_image": True,
                 "autoaugment": "torchvision", "true_gradient": False, "init_seed": None,
                 "fp32_precision": "default", "dataset_stats": "train"},
    "optim.wd_mode": "base",
    "optim.max_grad_norm": None,
    "model.style": "pytorch",
    "augment.cutout_per_image": True,
    "augment.policy": "torchvision",
    # SAM variants (docs/variants.md): before them, every SAM run was plain SAM
    "optim.variant": "sam",
    "optim.perturb": "all",
    "optim.ascent_steps": 1,
    "optim.second_order": False,
    "optim.ascent": "gradient",
    "dataset.label_noise": 0.0,
    "dataset.label_noise_mode": "uniform",
    "dataset.noise_seed": None,
    "model.in_channels": 3,  # every dataset before SVHN / Fashion-MNIST was RGB
    "accumulate": 1,  # issue 16: micro-batches per step (docs/accumulate.md)
    # issue 16 (docs/finetune.md): training options of the fine-tuning / ImageNet recipes
    "label_smoothing": 0.0,
    "wd_exclude_norm_bias": False,
    "bn_eval_mode": False,
    # issue 33: the initial weights' seed (null: the run seed, as every run before it)
    "init_seed": None,
    "fidelity.init_seed": None,
    "fidelity.dataset_stats": "train",  # SVHN / Fashion-MNIST: the training set's mean/std
    # issue 30 (Table 4, docs/label-noise.md): Mixup and bootstrap labels, off before
    "augment.mixup_alpha": 0.0,
    "bootstrap": None,
    # issue 31: the base optimizer's choice; before it, always SGD
    "optim.base": "sgd", "optim.betas": [0.9, 0.999], "optim.eps": 1e-8,
}
# optim=sgd was torch.optim.SGD itself; sam.optim.Descent with wd_mode=base and no
# clipping trains exactly as it did
LEGACY_SGD = {"_target_": "sam.optim.Descent",
              "base_optimizer": {"_target_": "hydra.utils.get_class", "path": "torch.optim.SGD"}}


def _node(config: Any, path: list[str]) -> Any:
    for key in path:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run's resolved config as far as it decides what is trained: without
    RESUME_FREE_KEYS, with KEYS_ADDED filled in where a config predates them."""
    out = copy.deepcopy(config)
    optim = out.get("optim")
    if isinstance(optim, dict) and optim.get("_target_") == "torch.optim.SGD":
        optim.update(copy.deepcopy(LEGACY_SGD))
    for key, value in KEYS_ADDED.items():
        *parents, leaf = key.split(".")
        node = _node(out, parents)
        if isinstance(node, dict):
            node.setdefault(leaf, copy.deepcopy(value))
    for key in RESUME_FREE_KEYS:  # after the fill: an added key may be resume-free too
        *parents, leaf = key.split(".")
        node = _node(out, parents)
        if isinstance(node, dict):
            node.pop(leaf, None)
    if out.get("init_seed") == out.get("seed"):  # init_seed = seed trains as null (= seed)
        out["init_seed"] = None
    return out


def flat_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": leaf}."""
    if not isinstance(node, dict) or not node:
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_config(value, f"{prefix}{key}."))
    return out


def config_diff(stored: dict[str, Any], config: dict[str, Any], limit: int = 3) -> str:
    """The first ``limit`` settings in which two configs differ: "key=old (now new)"."""
    a = flat_config(comparable_config(stored))
    b = flat_config(comparable_config(config))
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    text = "; ".join(f"{k}={a.get(k, '<unset>')} (now {b.get(k, '<unset>')})"
                     for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = False,
                 before_replace: Callable[[], None] | None = None) -> None:
    """Write a file so that readers see the old or the new content, never a part:
    write a temporary file in the same directory, fsync, then rename over ``path``
    (``before_replace`` runs just before the rename, once the new content is safe).
    The file gets the mode a plain ``open`` would (mkstemp's own is 0600: unreadable
    to collaborators sharing the results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: str | Path) -> None:
    """Delete the temporary files of ``atomic_write``s that a kill interrupted in
    ``directory`` (``.<name>.<random>.tmp``; a checkpoint's can be hundreds of MB)."""
    for tmp in Path(directory).glob(".*.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file written by ``write_json``."""
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a checkpoint; the previous one is kept as ``*.prev.pt``.
    The new file is complete on disk before the old ones move: a failed write (a full
    disk) leaves both as they were."""
    path = Path(path)

    def keep_previous() -> None:
        if path.exists():
            os.replace(path, path.with_suffix(".prev.pt"))

    atomic_write(path, lambda f: _torch_save(state, f), binary=True,
                 before_replace=keep_previous)


class _KeepWriteError:
    """A file that keeps the OSError of a failed write (torch.save reports it as a
    RuntimeError "unexpected pos", losing the errno: a full disk must say so)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(state: dict[str, Any], f: Any) -> None:
    sink = _KeepWriteError(f)
    try:
        torch.save(state, sink)
    except RuntimeError:
        if sink.error is None:
            raise
        raise sink.error from None


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, Any] | None, Path | None, str | None]:
    """Load ``path`` as data (``torch.load(weights_only=True)``: tensors, dicts, lists,
    numbers, strings), falling back to ``*.prev.pt`` when it is missing or corrupt. A file
    that holds other objects (a pickled class or function: loading it could run code) is
    refused with a UserError naming the opt-in that converts it (TRUST_COMMAND), never
    loaded otherwise and never skipped for an older file.

    Returns (state or None, the file it came from or None, a note about a fallback or
    an unreadable file, or None)."""
    path = Path(path)
    prev = path.with_suffix(".prev.pt")
    note = None
    for candidate in (path, prev):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or corrupted file: try the older one
            if unsafe := _unsafe_globals(candidate, err):
                raise UserError(refusal(candidate, unsafe)) from None
            note = f"checkpoint {candidate} is unreadable ({type(err).__name__})"
            continue
        if candidate == prev:
            note = (note or f"checkpoint {path} is missing") + \
                f"; falling back to the previous one, {prev.name}"
        return state, candidate, note
    return None, None, note


# the one opt-in that loads a checkpoint with the full unpickler (docs/reliability.md,
# "Security")
TRUST_COMMAND = "python -m sam.cli.trust_checkpoint {path} --i-trust-this-file"
_GLOBAL = re.compile(r"unsupported global:? GLOBAL ([\w.]+)", re.IGNORECASE)


def refusal(path: str | Path, unsafe: list[str]) -> str:
    """The one line refusing a checkpoint that holds the objects ``unsafe`` names."""
    shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
    command = TRUST_COMMAND.format(path=shlex.quote(str(path)))
    return (f"checkpoint {path} holds pickled objects, not only tensors and plain data "
            f"({shown}): loading it could run code, so it is refused; if you trust where it "
            f"came from, convert it once with `{command}`")


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The classes and functions that made the safe loader refuse ``path`` (a static scan
    of its pickle, else the name in torch's error); [] when the file is merely unreadable."""
    if not isinstance(err, pickle.UnpicklingError):
        return []
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (torch's legacy format) or truncated
        found = []
    names = found or _GLOBAL.findall(str(err))
    return sorted(set(names), key=lambda n: (n.startswith("builtins."), n))  # the telling first
