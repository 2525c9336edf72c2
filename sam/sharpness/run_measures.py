"""What ``sam-correlate`` measures on each run of a population, cached in the run's
directory (``correlate_measures.json``) so that a rerun, or one with more m, is cheap.

- The generalization gap, measured, not read from the training log: results.json's
  ``train_error`` is the running mean over the last epoch's augmented batches in train mode
  while the weights moved, so the final weights are evaluated again in eval mode, without
  augmentation, on the run's training images (all of them, or ``gap_images`` drawn with
  ``seed``: the labels it trained on, label noise included) and on its evaluation set
  (the test set, or its ``val_fraction`` split; its first ``dataset.test_subset`` images,
  as the trainer). ``gap = test_error - train_error`` in accuracy points (%), i.e. train
  accuracy - test accuracy (Jiang et al.'s g).
- m-sharpness (:func:`sam.sharpness.m_sharpness`, SAM paper section 4.1) for each m, on
  ``images`` fixed training images drawn with ``seed`` (:func:`sam.sharpness.fixed_subset`,
  as ``sam-sharpness``), BatchNorm in train mode by default (as SAM's step sees a shard).

The cache is used while the checkpoint is the same file (size and modification time) and
the settings of a value match; values of other m are added to it.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.data import Normalize, load_splits
from sam.errors import UserError
from sam.results import load_checkpoint, read_json, write_json
from sam.settings import stored_dataset
from sam.sharpness.job import load_weights
from sam.sharpness.measurement import fixed_subset
from sam.sharpness.msharpness import m_sharpness
from sam.sharpness.population import Run
from sam.stored_config import instantiate_stored

CACHE_FILE = "correlate_measures.json"
CACHE_VERSION = 2  # 2: the test error on dataset.test_subset, as the trainer


@dataclass(frozen=True)
class MeasureSettings:
    """How each run is measured (the cache's key)."""

    images: int  # m-sharpness images
    seed: int
    rho: float
    ascent_steps: int
    mode: str  # train or eval
    gap_images: int | None  # training images of the train error; None = all

    def sharpness_key(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seed": self.seed,
            "rho": self.rho,
            "ascent_steps": self.ascent_steps,
            "mode": self.mode,
        }

    def gap_key(self) -> dict[str, Any]:
        return {
            "gap_images": self.gap_images,
            "seed": self.seed if self.gap_images is not None else None,
        }


def _fingerprint(ckpt: Path) -> dict[str, int]:
    st = ckpt.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached(run: Run, ckpt: Path, remeasure: bool) -> dict[str, Any]:
    """The run's cache when it is of this checkpoint, else a new one."""
    fresh = {
        "schema_version": CACHE_VERSION,
        "checkpoint": _fingerprint(ckpt),
        "gap": None,
        "m_sharpness": None,
    }
    path = run.path / CACHE_FILE
    if remeasure or not path.is_file():
        return fresh
    try:
        doc = read_json(path)
    except (ValueError, OSError):
        return fresh
    if doc.get("schema_version") != CACHE_VERSION or doc.get("checkpoint") != fresh["checkpoint"]:
        return fresh
    return doc


class _Loaded:
    """The run's model (final weights) and data, loaded on first use."""

    def __init__(self, run: Run, ckpt: Path, device: torch.device, data_dir: str | None):
        self.run, self.ckpt, self.device, self.data_dir = run, ckpt, device, data_dir
        self._model: nn.Module | None = None
        self._splits: Any = None
        self.dataset: Any = None  # its DatasetSettings, with the splits

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            state, loaded, _ = load_checkpoint(self.ckpt)
            if not isinstance(state, dict) or loaded is None:
                raise UserError(
                    f"checkpoint {self.ckpt} is unreadable: retrain {self.run.path} "
                    "or move it out of the sweep"
                )
            model = instantiate_stored(self.run.config, "model", str(self.run.path))
            load_weights(model, state.get("model", state), loaded)
            self._model = model.to(self.device)
        return self._model

    @property
    def splits(self) -> Any:
        if self._splits is None:
            config = self.run.config
            self.dataset = stored_dataset(config, self.data_dir)
            self._splits = load_splits(self.dataset, config["seed"])
        return self._splits

    def eval_set(self) -> tuple[Tensor, Tensor]:
        """The images the trainer evaluated on: the first ``dataset.test_subset`` of the
        evaluation split (as sam.train.build does)."""
        sp, n = self.splits, self.dataset.test_subset
        return (sp.test_x, sp.test_y) if n is None else (sp.test_x[:n], sp.test_y[:n])


@torch.no_grad()
def _error(
    model: nn.Module, x: Tensor, y: Tensor, normalize: Normalize, batch: int, device: torch.device
) -> float:
    """Error (%) of ``model`` in eval mode on uint8 images ``x`` (normalized per batch)."""
    model.eval()
    wrong = 0
    for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
        wrong += int((model(normalize(xb.to(device))).argmax(1) != yb.to(device)).sum())
    return 100.0 * wrong / len(y)


def _gap(data: _Loaded, s: MeasureSettings, batch: int) -> dict[str, Any]:
    sp = data.splits
    normalize = Normalize(data.device, sp.mean, sp.std, cutout=False)
    tx, ty = sp.train_x, sp.train_y
    if s.gap_images is not None and s.gap_images < len(tx):
        # a generator of its own: a permutation from the run seed itself is the one that
        # chose the noisy labels (dataset.label_noise), see fixed_subset
        stream = hashlib.sha256(repr(("gap_images", int(s.seed))).encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(stream[:8], "little") >> 1)
        idx = torch.randperm(len(tx), generator=gen)[: s.gap_images]
        tx, ty = tx[idx], ty[idx]
    train = _error(data.model, tx, ty, normalize, batch, data.device)
    test_x, test_y = data.eval_set()
    test = _error(data.model, test_x, test_y, normalize, batch, data.device)
    final = data.run.results.get("final") or {}
    return {
        "settings": s.gap_key(),
        "train_error": train,
        "test_error": test,
        "gap": test - train,
        "train_images": len(ty),
        "test_images": len(test_y),
        "recorded": {
            "train_error": final.get("train_error"),
            "test_error": final.get("test_error"),
        },
    }


def _sharpness(data: _Loaded, s: MeasureSettings, ms: list[int]) -> dict[str, float]:
    sp = data.splits
    x, y = fixed_subset(sp.train_x, sp.train_y, s.images, s.seed, sp.mean, sp.std, data.device)
    model = data.model
    model.train(s.mode == "train")
    out = {}
    for m in ms:
        n = len(x) // m * m
        if n == 0:
            raise UserError(
                f"m={m} exceeds the {len(x)} training images of {data.run.path}: "
                "lower m or raise images"
            )
        torch.manual_seed(s.seed)  # dropout masks, if any: the same in every run
        v = m_sharpness(model, F.cross_entropy, x[:n], y[:n], m, s.rho, s.ascent_steps)
        out[str(m)] = v if math.isfinite(v) else None  # a diverged model: JSON null
    model.eval()
    return out


def measure_run(
    run: Run,
    s: MeasureSettings,
    ms: list[int],
    *,
    batch_size: int,
    device: torch.device,
    data_dir: str | None = None,
    remeasure: bool = False,
) -> tuple[dict[str, Any], bool]:
    """The run's gap record and ``{str(m): m-sharpness}`` for ``ms`` (module docstring),
    from the cache where it holds them; returns (document, whether anything was measured)."""
    ckpt = run.path / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise UserError(
            f"{run.path} is finished but holds no checkpoints/last.pt: the "
            "statistics need each run's final weights; retrain it or move it out"
        )
    doc = _cached(run, ckpt, remeasure)
    data = _Loaded(run, ckpt, device, data_dir)
    measured = False
    if not doc["gap"] or doc["gap"]["settings"] != s.gap_key():
        doc["gap"], measured = _gap(data, s, batch_size), True
    sharp = doc["m_sharpness"]
    if not sharp or sharp["settings"] != s.sharpness_key():
        sharp = {"settings": s.sharpness_key(), "values": {}}
    missing = [m for m in ms if str(m) not in sharp["values"]]
    if missing:
        sharp["values"] |= _sharpness(data, s, missing)
        measured = True
    doc["m_sharpness"] = sharp
    if measured:
        try:
            write_json(run.path / CACHE_FILE, doc)
        except OSError as err:  # someone else's sweep, read-only: measure, do not cache
            print(f"sam-correlate: warning: no cache in {run.path} ({err})", file=sys.stderr)
    values = {str(m): sharp["values"][str(m)] for m in ms}
    return {"gap": doc["gap"], "m_sharpness": values}, measured


def finite(v: float | None) -> bool:
    """Whether a recorded value is a number (null and NaN are not)."""
    return v is not None and math.isfinite(v)
