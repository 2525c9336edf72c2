"""One training run, resumable: ``run(cfg, run_dir)`` as a short list of named steps.

    validate -> prepare (join the ranks, find the run directory) -> already complete? done
    -> build -> resume or start -> open the run directory -> train the epochs -> finish

Every epoch trains with ``sam_step`` (:mod:`sam.train.loop`), evaluates, logs to
TensorBoard, checkpoints ``checkpoints/last.pt`` and rewrites ``results.json``. A failure
(or a NaN/inf loss) is recorded in results.json before it propagates; the last good
checkpoint is kept.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sam import distributed
from sam.results import remove_stale_temps, save_checkpoint, write_json
from sam.runtime import resolve_device
from sam.sharpness import epoch_sharpness
from sam.train.build import Setup, build
from sam.train.checkpoint import (
    RunDir,
    _previous_results,
    checkpoint_state,
    resume,
    write_invocation,
)
from sam.train.loop import Diverged, evaluate, train_epoch
from sam.train.record import (
    add_epoch,
    add_failure,
    finish,
    log_epoch,
    new_results,
    now,
    open_writer,
)
from sam.train.validation import validate

log = logging.getLogger("sam.train")  # the package's logger, as before the split


def run(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None,
        choices: dict[str, str] | None = None, multirun: bool = False,
        invocation_files: dict[str, Any] | None = None) -> dict:
    """Train one run into ``run_dir``; return its results dict (also in results.json).

    ``invocation_files`` (name -> config node, e.g. Hydra's config.yaml, hydra.yaml and
    overrides.yaml) go to ``run_dir/.hydra/`` once the directory is accepted for this
    config: see :func:`~sam.train.checkpoint.write_invocation`.
    """
    validate(cfg)
    device, directory = prepare(cfg, run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    previous = _previous_results(directory.results, config)
    if previous is not None and previous["status"] == "complete":
        log.info("run in %s is already complete (final test error %.2f%%): nothing to do",
                 directory.path, previous["final"]["test_error"])
        return previous
    setup = build(cfg, device)
    results = new_results(cfg, setup, config, overrides, choices)
    start_epoch, fresh = resume(cfg, setup, directory, config, results)
    progress = _progress_enabled(cfg, multirun) and directory.main
    writer = open_run_dir(directory, results, start_epoch=start_epoch, fresh=fresh,
                          invocation_files=invocation_files)
    try:
        train_epochs(cfg, setup, directory, results, writer, start_epoch=start_epoch,
                     progress=progress)
        finish(results, writer)
    except BaseException as err:
        add_failure(results, err)
        raise
    finally:
        close(directory, results, writer)
    return results


def prepare(cfg: DictConfig, run_dir: str | Path) -> tuple[torch.device, RunDir]:
    """Join the ranks under torchrun; returns this rank's device and the run directory
    (rank 0's path on every rank)."""
    device = distributed.init(resolve_device(cfg.device))  # joins the ranks under torchrun
    path = Path(distributed.broadcast_object(str(Path(run_dir))))  # rank 0's, on every rank
    return device, RunDir(path, main=distributed.is_main())  # only rank 0 logs and writes


def open_run_dir(directory: RunDir, results: dict, *, start_epoch: int, fresh: bool,
                 invocation_files: dict[str, Any] | None):
    """Write the invocation's config files, then (once every rank has read the directory)
    remove temp files a killed write left and write the first results.json. Returns the
    TensorBoard writer."""
    if directory.main and invocation_files:
        write_invocation(directory.path, invocation_files, fresh=fresh)
    distributed.barrier()  # every rank has read the run directory before rank 0 writes
    writer = open_writer(directory.path, start_epoch, directory.main)
    if directory.main:
        for folder in (directory.path, directory.checkpoint.parent):
            remove_stale_temps(folder)
        write_json(directory.results, results)
    return writer


def train_epochs(cfg: DictConfig, setup: Setup, directory: RunDir, results: dict, writer, *,
                 start_epoch: int, progress: bool) -> None:
    """Train the epochs after ``start_epoch``: each trained, evaluated, logged, measured
    (``sharpness.every``), added to the history and checkpointed."""
    for epoch in range(start_epoch, cfg.epochs):
        metrics = run_epoch(cfg, setup, epoch, precision=results["precision"],
                            progress=progress)
        log_epoch(writer, metrics)
        log.info("epoch %d/%d  train loss %.4f err %.2f%%  %s loss %.4f err %.2f%%  "
                 "%.0f img/s", epoch + 1, cfg.epochs, metrics["train_loss"],
                 metrics["train_error"], setup.data.eval_split, metrics["test_loss"],
                 metrics["test_error"], metrics["images_per_sec"])
        metrics.update(epoch_sharpness(cfg, setup.net, setup.data.splits, epoch + 1, writer))
        add_epoch(results, metrics)
        save(setup, directory, results, epoch + 1)


def run_epoch(cfg: DictConfig, setup: Setup, epoch: int, *, precision: str,
              progress: bool) -> dict:
    """Train epoch ``epoch`` (from 0) and evaluate; returns its metrics for the history
    (Diverged with the epoch, from 1, on a NaN/inf loss)."""
    t0 = time.perf_counter()
    setup.data.train.set_epoch(epoch)
    try:
        train_loss, train_error, seen = train_epoch(
            setup.model, setup.optimizer, setup.scheduler, setup.data.train, cfg,
            setup.amp_dtype, setup.scaler, setup.device, progress)
    except Diverged as div:
        raise Diverged(div.step, epoch + 1) from None
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    train_time = time.perf_counter() - t0
    # eager: a compiled model would recompile for eval mode and the last batch
    test_loss, test_error = evaluate(setup.net, setup.data.eval, setup.amp_dtype, setup.device)
    epoch_time = time.perf_counter() - t0
    return {"epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
            "test_loss": test_loss, "test_error": test_error,
            "lr": setup.optimizer.param_groups[0]["lr"],
            "images_per_sec": seen / train_time, "epoch_time_s": epoch_time,
            "precision": precision}


def save(setup: Setup, directory: RunDir, results: dict, epoch: int) -> None:
    """Checkpoint the run after ``epoch`` (from 1) and rewrite results.json."""
    rng_ranks = distributed.rng_states(setup.device)  # collective: before `if main`
    if directory.main:
        save_checkpoint(directory.checkpoint, checkpoint_state(setup, epoch, results, rng_ranks))
        write_json(directory.results, results)


def close(directory: RunDir, results: dict, writer) -> None:
    """Write results.json as the run ends, whichever way it ends, and close TensorBoard."""
    results["updated_at"] = now()
    if directory.main:
        write_json(directory.results, results)
    writer.close()


def _progress_enabled(cfg: DictConfig, multirun: bool) -> bool:
    if cfg.progress == "auto":
        return sys.stderr.isatty() and not multirun
    return bool(cfg.progress)
