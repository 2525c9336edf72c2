"""Learning-rate schedules, stepped once per optimizer step (the ``schedule`` config group).

Each is a partial (``_partial_: true`` in configs/schedule/) that the trainer completes with
``total_steps`` and ``steps_per_epoch`` once the training loader's length is known.
"""

from __future__ import annotations

import math

import torch


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
    warmup_epochs: float = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: linear warmup over w steps, then 0.5 (1 + cos(pi t / T))
    with t the steps after warmup and T = total - w (ends at 0)."""
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
    milestones: list[float], gamma: float,
) -> torch.optim.lr_scheduler.MultiStepLR:
    """LR multiplied by gamma at each milestone (a fraction of the total steps)."""
    steps = [round(f * total_steps) for f in milestones]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma)
