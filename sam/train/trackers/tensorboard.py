"""TensorBoard: ``SummaryWriter`` on ``<run dir>/tensorboard`` (the default tracker)."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

from sam.train.trackers.base import RunInfo


def open_tensorboard(info: RunInfo) -> SummaryWriter:
    """The run's writer; a resumed run drops the events of the epochs after the one it
    resumes from (it trains them again): ``purge_step = start_epoch + 1``."""
    return SummaryWriter(str(info.run_dir / "tensorboard"), purge_step=info.start_epoch + 1)
