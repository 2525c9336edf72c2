"""The runs ``sam-landscape`` draws: a run directory or a checkpoint file -> its network.

A run is named by a sam-train run directory (``results.json`` + ``checkpoints/last.pt``) or by
a checkpoint file, whose saved config rebuilds the model when there is no ``results.json``.
As in ``sam-sharpness``, a missing or unreadable ``last.pt`` falls back to ``last.prev.pt``
(said on stderr) and the prefixes of DDP and ``torch.compile`` are dropped from the weights.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from sam.errors import UserError
from sam.results import RESULTS_FILE, load_checkpoint
from sam.sharpness.job import load_weights, read_results
from sam.stored_config import checked_node

PROG = "sam-landscape"


@dataclass
class Run:
    """One run to draw: where it came from, its resolved config and its weights."""

    source: str  # what the user passed
    run_dir: Path | None  # the sam-train run directory (its tensorboard/), if known
    checkpoint: Path  # the file the weights came from
    config: dict[str, Any]
    weights: dict[str, Any] = field(repr=False)
    epoch: int | None
    status: str | None
    label: str = ""

    def model(self, device: torch.device, dtype: torch.dtype,
              channels_last: bool = False) -> nn.Module:
        """The run's network with its trained weights, on ``device`` in ``dtype``
        (``channels_last``: 4-D weights in that memory format, a third faster on a CPU)."""
        model_cfg = checked_node(self.config, "model", self.source)  # refused before any call
        try:
            net = instantiate(model_cfg)
        except Exception as err:
            raise UserError(f"{self.source}: cannot rebuild its model ({_first(err)}): pass "
                            "the run directory it was trained in") from err
        load_weights(net, self.weights, self.checkpoint)
        net = net.to(device=device, dtype=dtype)
        return net.to(memory_format=torch.channels_last) if channels_last else net


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_run(source: str) -> Run:
    """The run at ``source`` (a run directory or a checkpoint file); UserError with the fix
    when it is missing, unreadable or has no config."""
    path = Path(source).expanduser()
    if path.is_dir():
        run_dir: Path | None = path
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.exists() and not ckpt.with_suffix(".prev.pt").exists():
            raise UserError(f"{source} holds no checkpoints/last.pt: finish or resume the run "
                            "(sam-train with the same hydra.run.dir) or pass the checkpoint "
                            "file itself")
    elif path.is_file():
        ckpt = path
        parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        run_dir = parent if (parent / RESULTS_FILE).is_file() else None
    else:
        raise UserError(f"{source} does not exist: pass a sam-train run directory "
                        "(outputs/<date>/<time>) or a checkpoint (<run>/checkpoints/last.pt)")
    state, loaded, note = load_checkpoint(ckpt)
    if not isinstance(state, dict) or loaded is None:
        raise UserError(f"checkpoint {ckpt} is unreadable or not a sam-train checkpoint: "
                        "pass another run or checkpoint")
    if note:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    results = read_results(run_dir)
    config = results.get("config") or (state.get("config") if "model" in state else None)
    if not config or "model" not in config:
        raise UserError(f"no run config for {ckpt}: pass its sam-train run directory (the "
                        "one holding results.json)")
    checked_node(config, "model", source)  # refuse what it may not name before anything else
    status = results.get("status")
    if status not in (None, "complete"):
        print(f"{PROG}: warning: {source} is {status} (checkpoint of epoch "
              f"{state.get('epoch')}): drawing it as it is", file=sys.stderr)
    return Run(source=source, run_dir=run_dir, checkpoint=loaded, config=config,
               weights=state.get("model", state), epoch=state.get("epoch"), status=status)


def default_label(run: Run) -> str:
    """SGD, SAM (rho=0.05), ...: the run's optimizer as the plots name it."""
    optim = run.config.get("optim") or {}
    name = str(optim.get("name", "run")).upper()
    rho = optim.get("rho", run.config.get("rho"))
    if name != "SGD" and isinstance(rho, int | float):
        name += f" (rho={rho:g})"
    return name


def set_labels(runs: list[Run], labels: list[str] | None) -> None:
    """Give each run its label (``labels`` or :func:`default_label`); equal default labels
    get the run's directory name added."""
    if labels is not None:
        if len(labels) != len(runs):
            raise UserError(f"labels has {len(labels)} names for {len(runs)} runs: give one "
                            "per run, or none")
        for run, label in zip(runs, labels, strict=True):
            run.label = str(label)
    else:
        for run in runs:
            run.label = default_label(run)
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for i, run in enumerate(runs):
        if seen[run.label] > 1:
            where = run.run_dir or run.checkpoint
            run.label = f"{run.label} [{where.name or i}]"
    if len({run.label for run in runs}) < len(runs):
        for i, run in enumerate(runs):
            run.label = f"{run.label} #{i + 1}"


def slug(label: str) -> str:
    """A file-name-safe form of a label: ``SAM (rho=0.05)`` -> ``sam_rho0.05``."""
    text = re.sub(r"[^a-z0-9.]+", "_", label.lower().replace("=", "")).strip("_.")
    return text or "run"


def model_summary(config: dict[str, Any]) -> str:
    """The model config in one short line (its ``_target_`` and arguments)."""
    model = dict(config.get("model") or {})  # resolved, as sam-train wrote it
    target = str(model.pop("_target_", "?")).rsplit(".", 1)[-1]
    args = " ".join(f"{k}={v}" for k, v in model.items() if not isinstance(v, dict | list))
    return f"{target} {args}".strip()
