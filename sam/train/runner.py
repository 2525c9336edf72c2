"""One training run, resumable: ``run(cfg, run_dir)`` as a short list of named steps.

    validate (config -> typed Settings + Placement) -> prepare (join the ranks, find the
    run directory) -> lock it -> already complete? done -> build -> resume or start ->
    open the run directory -> train the epochs -> finish

The composed config is read once, here (``validate``); below this module everything takes
the typed ``sam.settings.Settings`` and this process's ``Placement``.

Every epoch trains with ``sam_step`` (:mod:`sam.train.loop`), evaluates, logs to
TensorBoard, checkpoints ``checkpoints/last.pt`` and rewrites ``results.json``
(:mod:`sam.train.saving`: also every ``checkpoint_every_steps`` steps, and at the step
where SIGTERM/SIGUSR1 arrived, then :class:`~sam.train.preemption.Preempted` ends the
run). A failure (a NaN/inf loss, a full disk: :mod:`sam.train.writes`) is recorded in
results.json where the disk still allows before it propagates; the last good checkpoint
is kept. One process at a time works in a run directory (:mod:`sam.train.lock`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sam import distributed
from sam.data import check_image_config
from sam.errors import UserError
from sam.results import remove_stale_temps, write_json
from sam.settings import LoggerSettings, Settings, read_settings
from sam.sharpness import epoch_sharpness
from sam.train.bootstrap import record_labels, relabeller
from sam.train.build import Setup, build
from sam.train.checkpoint import (
    RunDir,
    Start,
    _previous_results,
    resume,
    write_invocation,
)
from sam.train.lock import RunLock
from sam.train.loop import Diverged, EpochMeter, StepOptions, evaluate, train_epoch
from sam.train.placement import Placement, joined, place
from sam.train.preemption import Preempted, StopRequest
from sam.train.record import (
    add_epoch,
    add_failure,
    finish,
    log_epoch,
    new_results,
    now,
    open_writer,
)
from sam.train.saving import Saver
from sam.train.writes import quiet_background_writers, writing

log = logging.getLogger("sam.train")  # the package's logger, as before the split


def run(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None,
        choices: dict[str, str] | None = None, multirun: bool = False,
        invocation_files: dict[str, str] | None = None) -> dict:
    """Train one run into ``run_dir``; return its results dict (also in results.json).

    ``invocation_files`` (name -> YAML text, e.g. Hydra's config.yaml, hydra.yaml and
    overrides.yaml) go to ``run_dir/.hydra/`` once the directory is accepted for this
    config: see :func:`~sam.train.checkpoint.write_invocation`. Raises ``Preempted``
    after the checkpoint when a stop signal came, ``WriteFailed`` when a file could not
    be written, UserError when another process holds the directory.
    """
    settings, placement = validate(cfg)
    placement, directory = prepare(placement, run_dir)
    s = settings
    with locked(directory), StopRequest() as stop, quiet_background_writers():
        config = OmegaConf.to_container(cfg, resolve=True)
        previous = _previous_results(directory.results, config)
        if previous is not None and previous["status"] == "complete":
            log.info("run in %s is already complete (final test error %.2f%%): nothing to do",
                     directory.path, previous["final"]["test_error"])
            return previous
        # bootstrap=: the training labels a finished run predicts (sam.train.bootstrap)
        setup = build(s, placement, relabeller(s, config, directory.path, directory.main))
        results = new_results(s, placement, setup, config, overrides, choices,
                              backend=distributed.backend())
        record_labels(results, s, setup.data.bootstrap)  # Table 4: bootstrap, Mixup
        start = resume(s, placement, setup, directory, config, results)
        progress = _progress_enabled(s.progress, multirun) and directory.main
        writer = open_run_dir(directory, results, start_epoch=start.epoch, fresh=start.fresh,
                              invocation_files=invocation_files, logger=s.logger)
        saver = Saver(s.checkpoint_every_steps, setup, directory, results, stop,
                      ddp=placement.ddp)
        try:
            train_epochs(s, placement, setup, saver, results, writer, start=start,
                         progress=progress)
            with writing(directory.path / "tensorboard"):
                finish(results, writer)
        except Preempted as stopped:
            results.update(status="preempted", error=str(stopped))
            raise
        except BaseException as err:
            add_failure(results, err)
            raise
        finally:
            close(directory, results, writer)
    return results


def validate(cfg: DictConfig) -> tuple[Settings, Placement]:
    """The run's checked settings and placement, read once from the composed config;
    UserError (problem and fix on one line) for a config that cannot run."""
    settings = read_settings(OmegaConf.to_container(cfg, resolve=True))
    check_image_config(settings.dataset, settings.augment.name, settings.sharpness.on)
    return settings, place(settings)


def prepare(placement: Placement, run_dir: str | Path) -> tuple[Placement, RunDir]:
    """Join the ranks under torchrun; returns this rank's placement and the run directory
    (rank 0's path on every rank)."""
    placement = joined(placement)  # joins the ranks under torchrun
    path = Path(distributed.broadcast_object(str(Path(run_dir))))  # rank 0's, on every rank
    return placement, RunDir(path, main=placement.main)  # only rank 0 logs and writes


@contextmanager
def locked(directory: RunDir) -> Iterator[None]:
    """Hold the run directory's lock (rank 0 takes it) while the block runs; every rank
    raises when it is held elsewhere."""
    lock = RunLock(directory.path) if directory.main else None
    refused: Exception | None = None
    if lock is not None:
        try:
            lock.acquire()
        except Exception as err:  # told to the other ranks, then raised
            refused = err
    message = distributed.broadcast_object(str(refused) if refused else None)
    if refused is not None:
        raise refused
    if message is not None:
        raise UserError(message)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def open_run_dir(directory: RunDir, results: dict, *, start_epoch: int, fresh: bool,
                 invocation_files: dict[str, str] | None, logger: LoggerSettings | None = None):
    """Write the invocation's config files, then (once every rank has read the directory)
    remove temp files a killed write left and write the first results.json. Returns the
    trackers (TensorBoard and ``logger``'s others: :mod:`sam.train.trackers`)."""
    if directory.main and invocation_files:
        with writing(directory.path / ".hydra"):
            write_invocation(directory.path, invocation_files, fresh=fresh)
    distributed.barrier()  # every rank has read the run directory before rank 0 writes
    with writing(directory.path / "tensorboard"):
        writer = open_writer(directory.path, start_epoch, directory.main, logger,
                             results["config"], fresh)  # TensorBoard and logger=[...]
    if directory.main:
        for folder in (directory.path, directory.checkpoint.parent):
            remove_stale_temps(folder)
        with writing(directory.results):
            write_json(directory.results, results)
    return writer


def train_epochs(s: Settings, placement: Placement, setup: Setup, saver: Saver, results: dict,
                 writer, *, start: Start, progress: bool) -> None:
    """Train the epochs from ``start``: each trained, evaluated, logged, measured
    (``sharpness.every`` / ``sharpness.epochs``), added to the history and checkpointed. A
    stop signal ends it with ``Preempted`` once its checkpoint is written."""
    events = saver.directory.path / "tensorboard"
    options = step_options(s, placement)
    for epoch in range(start.epoch, s.epochs):
        if epoch > start.epoch or not start.step:  # a stop between epochs: saved already
            if saver.stop_signal() is not None:
                raise saver.stop.preempted(epoch + 1, 0) from None
        inside = epoch == start.epoch and start.meter is not None
        metrics = run_epoch(options, setup, epoch, precision=results["precision"],
                            progress=progress, saver=saver,
                            meter=_meter(options, setup, start.meter) if inside else None,
                            elapsed_s=start.elapsed_s if inside else 0.0)
        if metrics is None:  # stopped by a signal, checkpoint written
            raise saver.stop.preempted(epoch + 1, setup.data.train.position()["step"])
        with writing(events):
            log_epoch(writer, metrics)
        log.info("epoch %d/%d  train loss %.4f err %.2f%%  %s loss %.4f err %.2f%%  "
                 "%.0f img/s", epoch + 1, s.epochs, metrics["train_loss"],
                 metrics["train_error"], setup.data.eval_split, metrics["test_loss"],
                 metrics["test_error"], metrics["images_per_sec"])
        with writing(events):  # TensorBoard; spectrum/epoch_<n>.json (sharpness.slq_runs)
            metrics.update(epoch_sharpness(
                s.sharpness, setup.net, setup.data.splits, epoch + 1, writer, epochs=s.epochs,
                seed=s.seed, batch_size=s.batch_size, m=placement.effective_m,
                rho=s.optim.rho if s.is_sam else s.rho,
                run_dir=saver.directory.path if saver.directory.main else None))
        add_epoch(results, metrics)
        saver.after_epoch(epoch + 1)


def step_options(s: Settings, placement: Placement) -> StepOptions:
    """How every training step of the run goes (``train_epoch``'s options)."""
    return StepOptions(nan_check_every=s.nan_check_every, channels_last=s.channels_last,
                       m=placement.local_m, sync_ascent=s.ddp_sync_ascent, m_impl=s.m_impl,
                       accumulate=s.accumulate, label_smoothing=s.label_smoothing,
                       bn_eval_mode=s.bn_eval_mode, true_gradient=s.fidelity.true_gradient)


def _meter(options: StepOptions, setup: Setup, state: dict) -> EpochMeter:
    meter = EpochMeter(setup.device, options.nan_check_every)
    meter.load_state_dict(state)
    return meter


def run_epoch(options: StepOptions, setup: Setup, epoch: int, *, precision: str,
              progress: bool,
              saver: Saver | None = None, meter: EpochMeter | None = None,
              elapsed_s: float = 0.0) -> dict | None:
    """Train epoch ``epoch`` (from 0) and evaluate; returns its metrics for the history,
    or None when ``saver``'s stop signal ended it after a checkpoint (Diverged with the
    epoch, from 1, on a NaN/inf loss). ``meter`` and ``elapsed_s``: the sums and time of
    the part of the epoch trained before a resume."""
    t0 = time.perf_counter() - elapsed_s
    if meter is None:  # a resumed epoch's loader is already positioned inside it
        setup.data.train.set_epoch(epoch)
    try:
        out = train_epoch(
            setup.model, setup.optimizer, setup.scheduler, setup.data.train, options,
            setup.amp_dtype, setup.scaler, setup.device, progress, meter=meter,
            after_step=saver.step_check(epoch, t0) if saver is not None else None)
    except Diverged as div:
        raise Diverged(div.step, epoch + 1) from None
    if out is None:
        return None
    train_loss, train_error, seen = out
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


def close(directory: RunDir, results: dict, writer) -> None:
    """Write results.json as the run ends, whichever way it ends, and close TensorBoard.
    A write that fails here (the disk that stopped the run is still full) is logged, not
    raised: the error that ended the run is the one to report."""
    results["updated_at"] = now()
    try:
        if directory.main:
            write_json(directory.results, results)
    except OSError as err:
        log.warning("could not record status %s in %s: %s", results["status"],
                    directory.results, err)
    writer.end(results, directory.results)  # the trackers' status; never raises
    try:
        writer.close()
    except OSError as err:
        log.warning("could not close the TensorBoard events in %s: %s",
                    directory.path / "tensorboard", err)


def _progress_enabled(progress: bool | str, multirun: bool) -> bool:
    if progress == "auto":
        return sys.stderr.isatty() and not multirun
    return bool(progress)
