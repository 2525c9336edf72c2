"""A run directory across invocations: its files, when this config may continue it, and
what its checkpoint holds.

A directory holds one run. An invocation whose config differs (as far as it decides what is
trained: ``sam.results.comparable_config``) is refused; a complete run is left untouched;
a run with ``checkpoints/last.pt`` resumes from it exactly (weights, optimizer, schedule,
loss scale and every rank's RNG state), unless the checkpoint was written by another
number of processes or under semantics that trained this config differently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam import distributed
from sam.errors import UserError
from sam.results import (
    RESULTS_FILE,
    atomic_write,
    comparable_config,
    config_diff,
    load_checkpoint,
    read_json,
)
from sam.runtime import rng_state, set_rng_state
from sam.settings import Settings
from sam.train.build import Setup
from sam.train.placement import Placement

log = logging.getLogger("sam.train")  # the package's logger, as before the split

# What the trainer does with a config, numbered; checkpoints record it, and a resume across
# a change that alters how its config trains is refused (_refuse_changed_semantics).
#   1: the first version.  2: m applies to plain optimizers too (BatchNorm shards).
#   3: AutoAugment runs before the crop and flip, filling with grey (was: after, black).
SEMANTICS = 3


@dataclass(frozen=True)
class RunDir:
    """Where one run keeps its files; only rank 0 (``main``) writes them."""

    path: Path
    main: bool = True

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"


@dataclass(frozen=True)
class Start:
    """Where a run (re)starts: ``epoch`` (from 0) is the first epoch to train; ``fresh``:
    no checkpoint was found; inside a checkpointed epoch, ``meter`` is this rank's
    ``EpochMeter.state_dict()`` after ``step`` steps and ``elapsed_s`` the epoch's time
    so far (the training loader is already positioned there)."""

    epoch: int
    fresh: bool
    step: int = 0
    meter: dict | None = None
    elapsed_s: float = 0.0


def resume(s: Settings, place: Placement, setup: Setup, run_dir: RunDir, config: dict,
           results: dict) -> Start:
    """Continue from the directory's checkpoint, if it has one: load it into ``setup`` and
    its history into ``results``; a checkpoint taken inside an epoch also positions the
    training loader there. UserError when this config may not continue it."""
    state, _, note = load_checkpoint(run_dir.checkpoint)
    if note:
        log.warning(note)
    if state is None:
        return Start(0, True)
    _refuse_other_config(state["config"], config, run_dir.path)
    _refuse_changed_semantics(state, s, place, run_dir.path)
    _refuse_other_world_size(state, place.world, run_dir.path)
    if note := precision_change(state["history"], results["precision"]):
        log.warning(note)
    restore(state, setup)
    results.update(history=state["history"], wall_time_s=state["wall_time_s"],
                   started_at=state["started_at"])
    start = Start(state["epoch"], False)
    if (position := state.get("position")) is not None:
        setup.data.train.resume_at(position["loader"])
        ranks = position.get("meter_ranks")
        start = Start(state["epoch"], False, position["loader"]["step"],
                      ranks[place.rank] if ranks else position["meter"],
                      position["elapsed_s"])
    log.info("resuming %s from epoch %d%s", run_dir.path, start.epoch + bool(start.step),
             f", step {start.step}" if start.step else "")
    return start


def inside_epoch(setup: Setup, meter: Any, elapsed_s: float) -> dict:
    """A checkpoint's ``position`` inside an epoch: the training loader's (epoch, step,
    generator states), every rank's epoch sums (``meter``) and the epoch's time so far.
    Under DDP a collective: every rank calls it at the same step."""
    meter_state = meter.state_dict()
    return {"loader": setup.data.train.position(), "meter": meter_state,
            "meter_ranks": distributed.all_gather_object(meter_state),
            "elapsed_s": elapsed_s}


def checkpoint_state(setup: Setup, epoch: int, results: dict, rng_ranks: Any,
                     position: dict | None = None) -> dict:
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule,
    loss scale, RNG states (``rng_ranks``: every rank's, under DDP), the config and the
    history so far (from ``results``). ``epoch``: the epochs finished; ``position``
    (``inside_epoch``) when the checkpoint is taken inside the next one."""
    scaler = setup.scaler
    return {
        "model": setup.net.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "config": results["config"], "history": results["history"],
        "wall_time_s": results["wall_time_s"], "started_at": results["started_at"],
        "rng": rng_state(setup.device), "rng_ranks": rng_ranks,
        "semantics": SEMANTICS, "position": position,
    }


def restore(state: dict, setup: Setup) -> None:
    """Load a ``checkpoint_state`` into the live objects and the RNGs."""
    setup.net.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    if setup.scaler is not None and state.get("scaler"):
        setup.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], setup.device)
    distributed.restore_rng(state.get("rng_ranks"), setup.device)


def precision_change(history: list[dict], precision: str) -> str | None:
    """A warning when a resumed run goes on in another precision than its last epoch had
    (amp=auto resolves per device: bf16 where native, else fp32), else None."""
    before = history[-1].get("precision") if history else None
    if before is None or before == precision:
        return None
    return (f"resuming a run trained in {before} with {precision} on this device: its "
            f"epochs record each precision; start a new run to keep one")


def _previous_results(path: Path, config: dict) -> dict | None:
    """An earlier results.json of this directory, refusing one of another config."""
    if not path.exists():
        return None
    try:
        previous = read_json(path)
    except ValueError:
        return None
    if previous.get("summary") is None and not previous.get("history"):
        return None  # a sweep job refused before it began (sam.cli): nothing to protect
    _refuse_other_config(previous.get("config", {}), config, path.parent)
    return previous


def write_invocation(run_dir: Path, files: dict[str, str], fresh: bool) -> None:
    """Write each YAML text to ``run_dir/.hydra/<name>``: all of them when the
    run starts fresh, only the missing ones when it resumes (they describe the invocation
    that started it). Called after the directory's checks, so an invocation that is
    refused (another config, a bad value, an already complete run) never rewrites them."""
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in files.items():
        path = folder / name
        if fresh or not path.exists():
            atomic_write(path, lambda f, text=node: f.write(text))


def _refuse_other_config(stored: dict, config: dict, run_dir: Path) -> None:
    """UserError when a run directory holds a run of another config."""
    if comparable_config(stored) != comparable_config(config):
        hint = ("; it predates the fidelity group and trained as fidelity=pytorch: add "
                "fidelity=pytorch to resume it" if "fidelity" not in stored else "")
        raise UserError(f"{run_dir} holds a run with a different config "
                        f"({config_diff(stored, config)}): use a new run directory "
                        f"(hydra.run.dir=...) or the original overrides{hint}")


def _refuse_changed_semantics(state: dict, s: Settings, place: Placement,
                              run_dir: Path) -> None:
    """UserError when the checkpoint was written under semantics that trained this config
    differently (resuming would change the method mid-run); see SEMANTICS."""
    m = place.local_m
    if (state.get("semantics", 1) < 2 and not s.is_sam and m is not None
            and m < place.per_rank_batch):
        raise UserError(f"{run_dir} began when m did not apply to {s.optim.name} "
                        "(BatchNorm over the whole batch); this version gives it BatchNorm "
                        f"shards of m={m}: train it in a new run directory")
    if state.get("semantics", 1) < 3 and s.augment.name == "autoaugment":
        raise UserError(f"{run_dir} began when AutoAugment ran after the crop and flip; this "
                        "version runs it before them, as the official code: train it in a "
                        "new run directory")


def _refuse_other_world_size(state: dict, now: int, run_dir: Path) -> None:
    """UserError when the checkpoint was written by another number of processes: the
    per-rank batch sets BatchNorm's batches and SAM's per-rank eps (m), and every rank's
    RNG state is in the checkpoint, so a run continues with the world it began with."""
    before = distributed.checkpoint_world_size(state)
    if before != now:
        raise UserError(f"{run_dir} was trained by {before} process(es), this is {now}: "
                        f"resume it with {before} (torchrun --nproc_per_node={before}, or "
                        "without torchrun for 1), or train it in a new run directory")
