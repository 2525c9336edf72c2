"""One epoch of training and one pass of evaluation, with their device-side bookkeeping.

``train_epoch`` runs ``sam_step`` over the training loader and keeps the loss and error
sums on the device (``EpochMeter``): the host reads them once per epoch, and a NaN/inf
loss is caught without making the GPU wait (``Diverged``). ``evaluate`` computes the mean
cross-entropy and error over the evaluation set. Both sum across ranks under DDP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sam import distributed
from sam.data.mixup import hard_labels
from sam.models import true_gradient
from sam.optim import SAM, sam_step


class Diverged(Exception):
    """The training loss became NaN or inf at (epoch, step), both counted from 1."""

    def __init__(self, step: int, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch
        super().__init__(f"loss became NaN/inf in epoch {epoch}, step {step}: lower lr or "
                         "rho; the last good checkpoint is kept")


class EpochMeter:
    """Training loss, errors and the first NaN/inf step of an epoch, kept on the device.

    ``update`` raises Diverged(step) with the first step (from 1) whose loss was NaN/inf
    on any rank, checking every ``check_every`` steps. On the CPU a check reads the current
    state: the run stops within the step. On CUDA a check starts an asynchronous copy of
    the state to pinned memory and reads the copy the previous check started, which the
    device finished while later steps were queued: the GPU never waits for the host, and
    the run stops one check later. The recorded step is exact either way. ``result`` reads
    the totals once.
    """

    def __init__(self, device: torch.device, check_every: int = 1) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.wrong = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad = torch.zeros((), device=device, dtype=torch.long)  # 0: none yet
        self.seen, self.steps = 0, 0
        self.check_every = max(1, check_every)
        cuda = device.type == "cuda"
        self.lagged = cuda
        self._copy = torch.zeros((), dtype=torch.long, pin_memory=cuda)  # last check's state
        self._copied = torch.cuda.Event() if cuda else None

    def update(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one step's mean loss and outputs; check for NaN/inf as described above."""
        self.steps += 1
        self.loss_sum += loss.float() * len(y)
        self.wrong += (out.argmax(1) != y).sum()
        self.seen += len(y)
        self.first_bad = torch.where((self.first_bad == 0) & ~torch.isfinite(loss),
                                     self.steps, self.first_bad)
        if self.steps % self.check_every:
            return
        state = distributed.first_step_across_ranks(self.first_bad)  # on the device
        if not self.lagged:
            _raise_if_bad(int(state))
            return
        if self._copied is not None:
            self._copied.synchronize()  # the previous check's copy, long finished
        _raise_if_bad(int(self._copy))
        self._copy.copy_(state, non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def check_now(self) -> None:
        """Diverged if any step so far had a NaN/inf loss on any rank, read at once
        (before a checkpoint inside the epoch: never save diverged weights)."""
        _raise_if_bad(int(distributed.first_step_across_ranks(self.first_bad)))

    def state_dict(self) -> dict:
        """The sums so far, copied to the host (a checkpoint inside an epoch)."""
        return {"loss_sum": self.loss_sum.detach().cpu(), "wrong": self.wrong.cpu(),
                "first_bad": self.first_bad.cpu(), "seen": self.seen, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``: the next update adds to the same sums, so the
        epoch's totals are those of an uninterrupted epoch bit for bit."""
        device = self.loss_sum.device
        self.loss_sum = state["loss_sum"].to(device)
        self.wrong = state["wrong"].to(device)
        self.first_bad = state["first_bad"].to(device)
        self.seen, self.steps = state["seen"], state["steps"]

    def result(self) -> tuple[float, float, int]:
        """(mean loss, error %, images) over all ranks; Diverged if any loss was NaN/inf."""
        self.check_now()
        loss_sum, wrong, seen = distributed.sum_across_ranks(self.loss_sum, self.wrong,
                                                             self.seen)  # under DDP
        return loss_sum.item() / seen, 100.0 * wrong.item() / seen, seen


def _raise_if_bad(first_bad: int) -> None:
    if first_bad:
        raise Diverged(first_bad)


def training_loss(label_smoothing: float = 0.0) -> Callable[..., torch.Tensor]:
    """The training loss: cross-entropy, or with label smoothing a > 0 (as the official
    code's) the mean over the batch of (1 - a) CE(y) + a mean_k(-log p_k), k over all K
    classes: CE against the target (1 - a) onehot(y) + a / K. A Mixup batch's soft
    targets t (B, K) take the same rule: CE against (1 - a) t + a / K (sam.data.mixup)."""
    if not label_smoothing:
        return F.cross_entropy
    return partial(F.cross_entropy, label_smoothing=float(label_smoothing))


@dataclass(frozen=True)
class StepOptions:
    """How every training step runs: the run's settings and placement that ``sam_step``
    and the epoch loop read (``sam.train.runner.step_options`` makes it)."""

    nan_check_every: int = 1  # steps between NaN/inf loss checks
    channels_last: bool = False
    m: int | None = None  # sam_step's shard size (None: one shard)
    sync_ascent: bool = False  # ddp_sync_ascent
    m_impl: str = "auto"
    accumulate: int = 1
    label_smoothing: float = 0.0
    bn_eval_mode: bool = False
    true_gradient: bool = False  # Shake-Shake/ShakeDrop: the official ascent pass


def train_epoch(model, optimizer, scheduler, loader, options: StepOptions, amp_dtype, scaler,
                device, progress, *, meter: EpochMeter | None = None,
                after_step: Callable[[EpochMeter], bool] | None = None):
    """One epoch of sam_step; returns (mean loss, error %, images) read once at the end
    (Diverged on a NaN/inf loss: see EpochMeter). The loss is ``training_loss`` (label
    smoothing); ``bn_eval_mode``: BatchNorm layers normalise with their running statistics
    and leave them unchanged (their scale and shift still train).

    ``meter``: the epoch's sums so far (a resumed epoch), else a new one. ``after_step``
    is called after every step with the meter (``meter.steps``: steps done); when it
    returns True the epoch stops there and None is returned (a checkpoint and exit).
    """
    o = options
    model.train()
    if o.bn_eval_mode:  # the official fine-tuning: BatchNorm as at test time
        for layer in model.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
    meter = meter if meter is not None else EpochMeter(device, o.nan_check_every)
    ascent_context, loss_fn = None, training_loss(o.label_smoothing)
    if o.true_gradient and isinstance(optimizer, SAM):
        # the official ascent pass: Shake-Shake/ShakeDrop backpropagate through the forward
        # gate. A compile/DDP wrapper's modules() are the wrapped model's own modules
        ascent_context = partial(true_gradient, model)
    for x, y in tqdm(loader, disable=not progress, leave=False, unit="batch"):
        if o.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, out = sam_step(model, optimizer, loss_fn, x, y, m=o.m,
                             amp_dtype=amp_dtype, scaler=scaler, return_outputs=True,
                             sync_ascent=o.sync_ascent, shard_impl=o.m_impl,
                             ascent_context=ascent_context, accumulate=o.accumulate)
        scheduler.step()
        meter.update(loss, out, hard_labels(y))  # Mixup's soft targets: the larger weight
        if after_step is not None and after_step(meter):
            return None
    return meter.result()


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp_dtype, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and error (%) over the evaluation set, model in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        wrong += (out.argmax(1) != y).sum()
        n += len(y)
    loss_sum, wrong, n = distributed.sum_across_ranks(loss_sum, wrong, n)  # under DDP
    return loss_sum.item() / n, 100.0 * wrong.item() / n
