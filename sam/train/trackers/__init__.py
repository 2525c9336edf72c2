"""Experiment trackers beside results.json: TensorBoard (the default), CSV files, MLflow and
Weights & Biases, any several at once (``logger=[tensorboard,mlflow]``; docs/trackers.md).

``open_trackers`` returns one ``Trackers`` fan-out that the runner uses like TensorBoard's
``SummaryWriter`` (``add_scalar``, ``flush``, ``close``) plus ``end`` (the run's status and
results.json). A tracker other than TensorBoard that fails (a server down, a full disk)
costs the run nothing: one warning line, and the run goes on without it. TensorBoard's
event files are the run directory's own, and a failed write there stops the run as any
other file of it does (:mod:`sam.train.writes`).
"""

from sam.train.trackers.base import RunInfo, Tracker, tracker_status
from sam.train.trackers.fanout import Trackers, open_trackers

__all__ = ["RunInfo", "Tracker", "Trackers", "open_trackers", "tracker_status"]
