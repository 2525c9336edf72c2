"""Stopping on a signal: SIGTERM, SIGUSR1 (and submitit's preemption signal) make a run
finish its current step, checkpoint its position inside the epoch and exit.

The handler only records the signal (``StopRequest.signum``); the training loop reads
that attribute after each step (no syscall, no device sync) and the runner writes the
checkpoint. A second signal while the checkpoint is being written is recorded and
otherwise ignored, so it cannot interrupt the write. Once the checkpoint is on disk,
``Preempted.handoff`` calls the handler that was installed before ours (submitit's
checkpoint-and-requeue under ``hydra/launcher=slurm``), then the process exits with
128 + the signal number, the shell's status for "ended by this signal".
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from sam import distributed

log = logging.getLogger("sam.train")

# What SLURM sends before a preemption or the time limit (--signal=USR1@90, or USR2, the
# one submitit asks for unless SUBMITIT_PREEMPT_SIGNAL says otherwise) and what
# `kill`/`scancel` send by default.
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class Preempted(Exception):
    """A signal stopped the run after a checkpoint at (epoch, step) (epoch from 1, steps
    done in it); rerunning the command resumes there."""

    def __init__(self, signum: int, epoch: int, step: int,
                 previous: Callable[[int, FrameType | None], Any] | None = None) -> None:
        self.signum, self.epoch, self.step, self.previous = signum, epoch, step, previous
        name = signal.Signals(signum).name
        where = f"at epoch {epoch}, step {step}" if step else f"before epoch {epoch}"
        super().__init__(f"stopped by {name} {where}, after the last checkpoint: rerun the "
                         "same command to resume")

    @property
    def exit_status(self) -> int:
        """128 + the signal number (143 for SIGTERM, 138 for SIGUSR1)."""
        return 128 + self.signum

    def handoff(self) -> None:
        """Run the signal's earlier handler (submitit's requeue, which exits itself)."""
        if self.previous is not None:
            self.previous(self.signum, None)


class StopRequest:
    """Context manager: while active, ``STOP_SIGNALS`` set ``signum`` instead of ending
    the process; on exit the earlier handlers are back. Outside the main thread (a
    launcher running jobs in threads) it installs nothing and never asks to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal received
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
        else:  # e.g. a second scancel while the checkpoint is written: it finishes first
            os.write(2, f"sam-train: {signal.Signals(signum).name} again: still writing "
                        "the checkpoint\n".encode())

    def agreed(self) -> int | None:
        """The stop signal if this process or (under DDP) any rank received one: a
        collective, so every rank must call it at the same step."""
        if not distributed.is_distributed():
            return self.signum
        import torch

        (top,) = distributed.sum_across_ranks(torch.tensor(float(self.signum or 0)))
        any_rank = float(top)
        if any_rank and self.signum is None:  # another rank's signal: use the common one
            self.signum = signal.SIGTERM
        return self.signum if any_rank else None

    def preempted(self, epoch: int, step: int) -> Preempted:
        """The exception that ends the run, with the handler to hand the signal to."""
        assert self.signum is not None
        previous = self._previous.get(self.signum)
        chain = previous if callable(previous) and previous is not signal.default_int_handler \
            else None
        return Preempted(self.signum, epoch, step, chain)
