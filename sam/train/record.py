"""What a run records: its results dict (written to results.json, schema in
:mod:`sam.results`) and its scalars and hparams, to TensorBoard and the other chosen
trackers (:mod:`sam.train.trackers`, ``logger=[...]``).

Only rank 0 writes; the other ranks log to a ``_NoWriter``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sam.optim import variant_label
from sam.results import SCHEMA_VERSION
from sam.runtime import precision_name, versions
from sam.settings import LoggerSettings, Settings
from sam.settings.schema import TensorBoardLoggerSettings
from sam.train.build import Setup
from sam.train.loop import Diverged
from sam.train.placement import Placement
from sam.train.trackers import Trackers, open_trackers
from sam.train.trackers.base import run_info


def new_results(s: Settings, place: Placement, setup: Setup, config: dict,
                overrides: list[str] | None, choices: dict[str, str] | None,
                backend: str | None = None) -> dict:
    """The results dict of a run about to start (or resume): status "running", no epochs.
    ``backend``: the process group's (nccl, gloo) under DDP."""
    data = setup.data
    results = {
        "schema_version": SCHEMA_VERSION, "status": "running", "error": None,
        "summary": _summary(s, choices or {}, data.name, data.eval_split),
        "overrides": list(overrides or []), "config": config, "data_source": data.source,
        "label_noise": getattr(data.splits, "label_noise", None),  # its record, or None
        # why synthetic data replaced the dataset (dataset.fallback_synthetic), or None
        "synthetic_fallback": getattr(data.splits, "fallback", None),
        "history": [], "final": None, "wall_time_s": 0.0, "images_per_sec": None,
        "device": place.device_name, "precision": precision_name(setup.amp_dtype),
        # what convolutions and matmuls computed in (fidelity.fp32_precision, amp)
        "fp32_precision": setup.fp32_precision,
        "versions": versions(),
        "started_at": now(), "updated_at": now(),
    }
    if place.ddp:
        results["distributed"] = place.describe(backend or "")
        # per-rank ascent makes each rank a shard: the report must see that m
        results["summary"]["m"] = results["distributed"]["effective_m"]
    return results


def add_epoch(results: dict, metrics: dict) -> None:
    """Append one finished epoch's metrics to the history."""
    results["history"].append(metrics)
    results["wall_time_s"] += metrics["epoch_time_s"]
    results["updated_at"] = now()


def finish(results: dict, writer) -> None:
    """Mark the run complete: the last epoch's metrics as ``final`` (never the best
    epoch), the mean throughput, and the hparams for TensorBoard."""
    history = results["history"]
    results["final"] = {k: history[-1][k] for k in
                        ("epoch", "train_loss", "train_error", "test_loss", "test_error")}
    results["images_per_sec"] = sum(h["images_per_sec"] for h in history) / len(history)
    results["status"] = "complete"
    writer.add_hparams(_flat_hparams(results["summary"]),
                       {f"hparam/final_{k}": v for k, v in results["final"].items()
                        if k != "epoch"}, run_name=".")


def add_failure(results: dict, err: BaseException) -> None:
    """Mark the run diverged (a NaN/inf loss: where) or failed, with the reason."""
    results["status"] = "diverged" if isinstance(err, Diverged) else "failed"
    if isinstance(err, Diverged):
        results["diverged_at"] = {"epoch": err.epoch, "step": err.step}
    results["error"] = f"{type(err).__name__}: {err}"


def open_writer(run_dir: Path, start_epoch: int, main: bool,
                logger: LoggerSettings | None = None, config: dict | None = None,
                fresh: bool = True):
    """The run's trackers on rank 0 (``logger``; None: TensorBoard only), else a
    ``_NoWriter``: a :class:`~sam.train.trackers.Trackers` that takes ``add_scalar``
    as TensorBoard's writer does. TensorBoard writes ``run_dir/tensorboard``, dropping
    any events of epochs after ``start_epoch`` (a resumed run trains them again); the
    others get ``config`` (the resolved config) as their params."""
    if not main:
        return _NoWriter()
    info = run_info(run_dir, config or {}, fresh=fresh, start_epoch=start_epoch)
    return open_trackers(logger or LoggerSettings(tensorboard=TensorBoardLoggerSettings()), info)


def log_epoch(writer: Trackers, m: dict) -> None:
    """One epoch's scalars, at step = the epoch (from 1)."""
    step = m["epoch"]
    for key in ("train_loss", "train_error", "test_loss", "test_error"):
        writer.add_scalar(key.replace("_", "/", 1), m[key], step)
    writer.add_scalar("lr", m["lr"], step)
    writer.add_scalar("images_per_sec", m["images_per_sec"], step)
    writer.flush()


def now() -> str:
    """The time for ``started_at`` / ``updated_at``: UTC, ISO 8601, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class _NoWriter:
    """SummaryWriter stand-in for ranks > 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _summary(s: Settings, choices: dict[str, str], data_name: str, eval_split: str) -> dict:
    spec = s.model.spec
    model = choices.get("model", spec["_target_"])
    if spec.get("_target_") == "sam.models.timm_model.timm_model":  # model=timm
        model = f"timm/{spec['name']}"  # the net, so that reports keep timm nets apart
    # the net trained, not the file it started from: model=resnet20 model.depth=8 is a ResNet-8
    elif spec.get("_target_") == "sam.models.resnet.CifarResNet" and "depth" in spec:
        model = f"resnet{spec['depth']}"
    elif spec.get("_target_") == "sam.models.wrn.WideResNet" and "depth" in spec:
        model = f"wrn{spec['depth']}_{spec.get('widen_factor', 1)}"
    if spec.get("norm", "batchnorm") != "batchnorm":  # a row of its own in reports
        model = f"{model} norm={spec['norm']}"
    return {"dataset": data_name, "model": model,
            "augment": s.augment.name, "optim": s.optim.name,
            "rho": s.optim.rho if s.is_sam else None, "m": s.m,  # SGD: BatchNorm shards
            "variant": variant_label(s.optim.spec) if s.is_sam else None,  # docs/variants.md
            "epochs": s.epochs, "seed": s.seed, "batch_size": s.batch_size,
            # the initial weights' seed: the run seed (null), or one for every run (official)
            "init_seed": s.init_seed,
            # what the optimizer got (the long forms optim.lr / optim.weight_decay too)
            "lr": s.optim.lr, "lam": s.optim.weight_decay,
            "eval_split": eval_split, "label_noise": s.dataset.label_noise,
            "fidelity": s.fidelity.name}


def _flat_hparams(summary: dict) -> dict:
    return {k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in summary.items()}
