"""The process group: joining the ranks of torchrun (or of a SLURM job), and who is who.

``torchrun --nproc_per_node=N -m sam.cli ...`` starts N processes whose environment holds
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init`` joins them (nccl on
CUDA, each rank on cuda:LOCAL_RANK; gloo on CPU). Outside a launcher (WORLD_SIZE unset or
1) every helper is a no-op and this process is rank 0 of 1.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from sam.errors import UserError

# Hydra overrides for ranks > 0 under torchrun: no run directory, no .hydra/, no log
# file and no console logging of their own (rank 0 tells them its run directory).
QUIET_RANK_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null",
                        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (or the SLURM/submitit export below); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else env_rank()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints, logs and writes files."""
    return rank() == 0


def adopt_submitit_env() -> None:
    """In a SLURM job of the submitit launcher with several tasks (tasks_per_node > 1,
    one per GPU), export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as
    torchrun would, so that the tasks of one job train together with DDP."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if env_rank() > 0:  # Hydra set up logging for every task; rank 0 speaks for the run
            logging.getLogger("sam").setLevel(logging.ERROR)


def init(device: torch.device) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1; return this rank's
    device (cuda:LOCAL_RANK on CUDA). A no-op returning ``device`` otherwise."""
    world = env_world_size()
    if world <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"device={device} under torchrun: use device=cuda or auto "
                            "(each rank takes cuda:LOCAL_RANK)")
        count = torch.cuda.device_count()
        if local >= count:
            raise UserError(f"local rank {local} but only {count} GPU(s) visible: use "
                            f"torchrun --nproc_per_node={count} or fewer")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)  # env:// rendezvous from the launcher's variables
    return device


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str | None:
    """The process group's backend (nccl, gloo), or None outside one."""
    return dist.get_backend() if is_distributed() else None
