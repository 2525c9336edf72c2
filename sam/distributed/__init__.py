"""Multi-process runs (torchrun, or several SLURM tasks), one idea per module:

- ``group``: join the ranks, who is who (``init``, ``rank``, ``world_size``, ``is_main``);
- ``collectives``: what the ranks exchange (``barrier``, ``broadcast_object``, sums);
- ``sharding``: each rank's slice of the batch, the DDP wrapper, per-rank noise;
- ``batch``: per-rank batch and m arithmetic (``local_m``, ``effective_m``);
- ``rng``: every rank's RNG state in a checkpoint.

The trainer asks these once, when it places a run (``sam.train.placement``), and hands the
answer down. Outside a launcher every helper is a no-op.
"""

from sam.distributed.batch import effective_m, local_m
from sam.distributed.collectives import (
    all_gather_object,
    barrier,
    broadcast_object,
    first_step_across_ranks,
    sum_across_ranks,
)
from sam.distributed.group import (
    QUIET_RANK_OVERRIDES,
    adopt_submitit_env,
    backend,
    cleanup,
    env_rank,
    env_world_size,
    init,
    is_distributed,
    is_main,
    rank,
    world_size,
)
from sam.distributed.rng import checkpoint_world_size, restore_rng, rng_states
from sam.distributed.sharding import ShardedLoader, seed_rank, shard, wrap

__all__ = ["QUIET_RANK_OVERRIDES", "ShardedLoader", "adopt_submitit_env", "all_gather_object",
           "backend", "barrier", "broadcast_object", "checkpoint_world_size", "cleanup",
           "effective_m", "env_rank", "env_world_size", "first_step_across_ranks", "init",
           "is_distributed", "is_main", "local_m", "rank", "restore_rng", "rng_states",
           "seed_rank", "shard", "sum_across_ranks", "world_size", "wrap"]
