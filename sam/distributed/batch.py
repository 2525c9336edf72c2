"""Per-rank batch and m: the arithmetic of splitting a global batch over the ranks.

Plain integers in, plain integers out, so the trainer, ``sam-sharpness`` (which reads a
checkpoint's world size) and the tests share one rule.
"""

from __future__ import annotations


def local_m(m: int | None, batch_size: int) -> int | None:
    """The m to pass to sam_step: None (one shard) for m=null or m=batch_size."""
    return None if m is None or m == batch_size else m


def effective_m(batch_size: int, m: int | None, world: int, *, sam: bool,
                sync_ascent: bool) -> int:
    """The examples behind one SAM eps (and, for both optimizers, one BatchNorm shard) in
    a run of ``world`` processes: m, or the per-rank batch (the whole batch in one
    process); with SAM's ``ddp_sync_ascent`` the global batch."""
    if world > 1 and sam and sync_ascent:
        return batch_size
    return local_m(m, batch_size) or batch_size // world
