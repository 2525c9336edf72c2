"""When a run writes its checkpoint: after every epoch, every ``checkpoint_every_steps``
steps inside an epoch, and at the step where a stop signal arrived (then it exits).

A checkpoint inside an epoch records the position there (:func:`inside_epoch`), so a
resumed run trains the rest of that epoch on the same batches and ends bit-identical to
an uninterrupted run (CPU, deterministic=true). Each write is atomic; the first write of
each kind in a session is timed and logged with its size, the cost of one checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sam import distributed
from sam.results import save_checkpoint, write_json
from sam.train.build import Setup
from sam.train.checkpoint import RunDir, checkpoint_state, inside_epoch
from sam.train.loop import EpochMeter
from sam.train.preemption import StopRequest
from sam.train.writes import writing

log = logging.getLogger("sam.train")

# Under DDP the ranks agree on a stop with one small all-reduce every this many steps
# (one process reads its flag after every step, which costs nothing).
STOP_SYNC_STEPS = 10


class Saver:
    """The run's checkpoint writes and its stop signal (``stop``)."""

    def __init__(self, every_steps: int, setup: Setup, directory: RunDir, results: dict,
                 stop: StopRequest, *, ddp: bool) -> None:
        self.setup, self.directory, self.results, self.stop = setup, directory, results, stop
        self.every = every_steps  # checkpoint_every_steps (0: after epochs only)
        self.steps_per_epoch = len(setup.data.train)  # its last step: the epoch's checkpoint
        self.ddp = ddp
        self._timed: set[str] = set()

    def stop_signal(self) -> int | None:
        """The stop signal, if one came (under DDP: to any rank; a collective)."""
        return self.stop.agreed()

    def after_epoch(self, epoch: int) -> None:
        """Checkpoint after ``epoch`` (from 1) and rewrite results.json."""
        self._save(epoch, None, "after an epoch")
        if self.directory.main:
            with writing(self.directory.results):
                write_json(self.directory.results, self.results)

    def step_check(self, epoch: int, t0: float) -> Callable[[EpochMeter], bool]:
        """``train_epoch``'s ``after_step`` for epoch ``epoch`` (from 0) begun at
        ``perf_counter() == t0``: checkpoint every ``every`` steps and when a stop signal
        came; True (stop the epoch) in the second case. Reads one attribute per step."""
        def check(meter: EpochMeter) -> bool:
            steps = meter.steps
            if self.ddp:
                signum = self.stop.agreed() if steps % STOP_SYNC_STEPS == 0 else None
            else:
                signum = self.stop.signum
            due = self.every and steps % self.every == 0 and steps < self.steps_per_epoch
            if signum is not None or due:
                meter.check_now()  # a lagged (CUDA) NaN check must not let NaN weights in
                position = inside_epoch(self.setup, meter, time.perf_counter() - t0)
                self._save(epoch, position, "inside an epoch")
            return signum is not None

        return check

    def _save(self, epoch: int, position: dict | None, kind: str) -> None:
        rng_ranks = distributed.rng_states(self.setup.device)  # collective: before `if main`
        if not self.directory.main:
            return
        path = self.directory.checkpoint
        t0 = time.perf_counter()
        with writing(path):
            save_checkpoint(path, checkpoint_state(self.setup, epoch, self.results, rng_ranks,
                                                   position))
        if kind not in self._timed:  # the cost of one checkpoint, once per kind
            self._timed.add(kind)
            log.info("checkpoint %s written in %.3f s (%.1f MB, %s)", path,
                     time.perf_counter() - t0, path.stat().st_size / 1e6, kind)
