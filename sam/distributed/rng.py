"""Every rank's RNG state in a checkpoint, and putting it back on resume."""

from __future__ import annotations

import torch

from sam.distributed.collectives import all_gather_object
from sam.distributed.group import is_distributed, rank, world_size
from sam.runtime import rng_state, set_rng_state


def rng_states(device: torch.device) -> list[dict] | None:
    """Every rank's ``rng_state`` (for the checkpoint); None outside a process group."""
    if not is_distributed():
        return None
    return all_gather_object(rng_state(device))


def checkpoint_world_size(state: dict) -> int:
    """How many processes wrote a checkpoint: one ``rng_states`` entry per rank (None in
    one process)."""
    return len(state.get("rng_ranks") or []) or 1


def restore_rng(states: list[dict] | None, device: torch.device) -> None:
    """Set this rank's RNG from ``rng_states`` of a checkpoint of the same world size."""
    if not is_distributed() or not states or len(states) != world_size():
        return
    set_rng_state(states[rank()], device)
