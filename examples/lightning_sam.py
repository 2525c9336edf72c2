"""SAM inside PyTorch Lightning: a LightningModule with manual optimization that takes
exactly the steps of this project's ``sam_step`` (tests/test_lightning_example.py checks
it, parameters and BatchNorm statistics, fp32 and bf16 autocast).

    pip install -e ".[examples]"        # lightning (no newer torch)
    python examples/lightning_sam.py    # a few steps on random images, on the CPU

One step, as ``sam_step`` takes it (sam/optim/step.py), through ``SAM.step(closure)``,
the closure form of the optimizer (sam/optim/sam.py), which calls the closure twice:

1. the clean pass at w: loss and backward; eps = rho g / ||g||, w -> w + eps
   (``first_step``);
2. the perturbed pass at w + eps with the SAME random draws (dropout, shake): SAM.step
   replays the RNG state of the clean pass (``RngReplay``, sam/optim/rng.py); and with
   BatchNorm's running statistics frozen (``frozen_bn_stats``, sam/optim/batchnorm.py),
   which the closure does on its second call, so that only the clean pass updates them,
   once per step (``SAM.step(closure, model=net)`` would do it, but Lightning's
   ``optimizer.step`` keeps a ``model`` argument for itself);
3. w restored bit for bit, the gradient taken at w + eps clipped to global norm
   ``max_grad_norm`` exactly as the official code (t c/||t|| when ||t|| >= c, no
   epsilon; google-research/sam flax_training.py ``train_step``: after the cross-replica
   mean of the SAM gradient, before ``apply_gradient``), then the base optimizer's step.

Lightning's own ``gradient_clip_val`` cannot serve: Lightning refuses it under manual
optimization, and its ``clip_grad_norm_`` adds 1e-6 to the norm; the clipping is SAM's
``max_grad_norm``. ``self.optimizers().step(closure=...)`` goes through Lightning
(it counts the step for ``max_steps``, runs the precision plugin and the
``on_before_optimizer_step`` hooks, the latter once per pass).

Precision: ``Trainer(precision="bf16-mixed")`` runs ``training_step``, both passes
included, under ``torch.autocast(bfloat16)`` (CPU or CUDA): the same numbers as
``sam_step(..., amp_dtype=torch.bfloat16)``. fp16 (``"16-mixed"``) does not fit:
Lightning's GradScaler path calls ``optimizer.step()`` without the closure. Use bf16 or
fp32 here; the library's fp16 path is ``sam_step(..., scaler=...)``, outside Lightning.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.optim import SAM, frozen_bn_stats


class SAMModule(L.LightningModule):
    """``net`` trained with SAM around ``base`` (SGD with Nesterov momentum by default):
    ``rho``, ``wd_mode`` ("base": the base's weight decay; "loss": L2 in the loss, as the
    official code), ``max_grad_norm`` (the official clipping) and the base's own options
    (``base_kwargs``: lr, momentum, weight_decay, ...)."""

    def __init__(
        self,
        net: nn.Module,
        rho: float = 0.05,
        base: type[torch.optim.Optimizer] = torch.optim.SGD,
        wd_mode: str = "base",
        max_grad_norm: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # SAM takes two passes per step
        self.net = net
        self.rho, self.base, self.wd_mode = rho, base, wd_mode
        self.max_grad_norm, self.base_kwargs = max_grad_norm, base_kwargs

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> SAM:
        return SAM(
            self.net.parameters(),
            self.base,
            rho=self.rho,
            wd_mode=self.wd_mode,
            max_grad_norm=self.max_grad_norm,
            **self.base_kwargs,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One SAM step (module docstring); returns the clean pass's loss."""
        x, y = batch
        opt = self.optimizers()
        calls = 0

        def closure() -> Tensor:  # SAM.step runs it at w, then at w + eps (same draws)
            nonlocal calls
            calls += 1
            with frozen_bn_stats(self.net) if calls > 1 else nullcontext():
                loss = F.cross_entropy(self.net(x), y)
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        self.log("train_loss", loss.detach(), prog_bar=True)
        return loss.detach()


def small_net(classes: int = 10) -> nn.Module:
    """A small CNN with BatchNorm and dropout: what SAM's two passes must handle."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def main() -> None:
    """A few SAM steps on random 32x32 images, on the CPU."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    module = SAMModule(
        small_net(),
        rho=0.05,
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        max_grad_norm=5.0,
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        precision="bf16-mixed",
    )
    trainer.fit(module, loader)


if __name__ == "__main__":
    main()
