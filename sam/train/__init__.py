"""The trainer: one SGD or SAM run from a resolved config, resumable (``sam-train``).

- :mod:`~sam.train.runner`: :func:`run`, the run as a list of named steps, and
  :func:`validate`, the config read once into typed settings (``sam.settings``).
- :mod:`~sam.train.placement`: :class:`Placement`, where and how this process runs.
- :mod:`~sam.train.build`: data loaders, model, optimizer, schedule and precision.
- :mod:`~sam.train.loop`: one epoch of ``sam_step`` (:func:`train_epoch`), :func:`evaluate`,
  the device-side bookkeeping (:class:`EpochMeter`) and :class:`Diverged`.
- :mod:`~sam.train.checkpoint`: the run directory across invocations: resume and its checks.
- :mod:`~sam.train.record`: the results dict (results.json) and TensorBoard.
- :mod:`~sam.train.schedules`: the learning-rate schedules (configs/schedule/).
- :mod:`~sam.train.saving`: when checkpoints are written (epochs, ``checkpoint_every_steps``,
  a stop signal); :mod:`~sam.train.preemption`: SIGTERM/SIGUSR1 -> :class:`Preempted`;
  :mod:`~sam.train.lock`: one process per run directory (:class:`RunDirBusy`);
  :mod:`~sam.train.writes`: a failed write (full disk) as :class:`WriteFailed`.
"""

from sam.data import load_splits  # kept here for old imports: lives in sam.data
from sam.runtime import amp_settings  # kept here for old imports: lives in sam.runtime
from sam.train.build import Data, Setup, build, build_data, build_optimizer
from sam.train.checkpoint import (
    SEMANTICS,
    RunDir,
    _previous_results,
    _refuse_changed_semantics,
    _refuse_other_config,
    _refuse_other_world_size,
    checkpoint_state,
    precision_change,
    restore,
    resume,
    write_invocation,
)
from sam.train.lock import RunDirBusy, RunLock
from sam.train.loop import Diverged, EpochMeter, StepOptions, evaluate, train_epoch
from sam.train.placement import Placement, place
from sam.train.preemption import Preempted, StopRequest
from sam.train.runner import run, validate
from sam.train.schedules import cosine_schedule, step_schedule
from sam.train.writes import WriteFailed

__all__ = [
    "SEMANTICS",
    "Data",
    "Diverged",
    "EpochMeter",
    "Placement",
    "Preempted",
    "RunDir",
    "RunDirBusy",
    "RunLock",
    "Setup",
    "StepOptions",
    "StopRequest",
    "WriteFailed",
    "_previous_results",
    "_refuse_changed_semantics",
    "_refuse_other_config",
    "_refuse_other_world_size",
    "amp_settings",
    "build",
    "build_data",
    "build_optimizer",
    "checkpoint_state",
    "cosine_schedule",
    "evaluate",
    "load_splits",
    "place",
    "precision_change",
    "restore",
    "resume",
    "run",
    "step_schedule",
    "train_epoch",
    "validate",
    "write_invocation",
]
