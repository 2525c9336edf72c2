"""Replay of the random draws of one training step.

SAM evaluates the same network twice per step, at w and at w + eps; with dropout or
shake-shake the second pass must see the same random network as the first, so the
device's RNG state is saved before the clean pass and restored before the perturbed one.
"""

from __future__ import annotations

import torch


class RngReplay:
    """Snapshot of the RNG of a device, to replay the same dropout/shake draws in every
    pass of one step (the clean and the perturbed pass see the same random network)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
