"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) for any torch optimizer.

Pure torch, imports nothing else of the project. Two ways to use it:

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss = sam_step(model, opt, F.cross_entropy, x, y)          # one call per batch

or the closure form ``opt.step(closure, model=model)``, or the explicit two-step form

    rng = RngReplay(x.device)
    loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)   # w -> w + eps
    rng.replay()                                      # the same dropout/shake draws
    with frozen_bn_stats(model):                      # BatchNorm: only the clean pass updates
        loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)                   # restore w, base step

sam.py holds the optimizer (the paper's eqs. 2-3, GradScaler), descent.py the descent
step it shares with plain runs (``Descent``: weight-decay mode, exact clipping),
bases.py the base optimizers a config names (sgd, adam, adamw),
perturbation.py the ascent formulas (p=2, p=inf, ASAM), step.py ``sam_step`` (with
passes.py, shards.py and vmap.py for m-sharpness, accumulate.py for micro-batches, ddp.py
for DistributedDataParallel),
batchnorm.py and rng.py what the two passes of a step need. Beside the core: the
paper's ablations (ablations.py), GSAM (gsam.py), LookSAM (looksam.py) and SAM-ON's
per-group rho (variants.py); docs/variants.md.
"""

from .bases import BASE_OPTIONS, BASES, base_optimizer
from .batchnorm import fp32_batchnorm_inputs, frozen_bn_stats, ghost_batchnorm
from .descent import Descent, clip_by_global_norm_
from .gsam import GSAM
from .looksam import LookSAM
from .rng import RngReplay
from .sam import SAM
from .step import sam_step
from .variants import exclude_from_weight_decay, param_groups, variant_label

__all__ = [
    "BASE_OPTIONS",
    "BASES",
    "GSAM",
    "SAM",
    "Descent",
    "LookSAM",
    "RngReplay",
    "base_optimizer",
    "clip_by_global_norm_",
    "exclude_from_weight_decay",
    "fp32_batchnorm_inputs",
    "frozen_bn_stats",
    "ghost_batchnorm",
    "param_groups",
    "sam_step",
    "variant_label",
]
