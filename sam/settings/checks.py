"""The settings that depend on one another, checked once every value is in range.

What needs the device or the number of processes is checked when the run is placed
(``sam.train.placement``); a SAM variant's own combinations by ``sam.optim``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sam.errors import UserError

if TYPE_CHECKING:
    from sam.settings.schema import Settings


def check_settings(s: Settings) -> None:
    """UserError (problem and fix, one line) for the first combination that cannot run."""
    if s.is_sam:
        _check_variant(s)
    _check_base(s)
    _check_accumulate(s)
    if s.augment.mixup_alpha < 0:
        raise UserError(f"augment.mixup_alpha={s.augment.mixup_alpha}: must be > 0 to mix "
                        "(lam ~ Beta(alpha, alpha); Table 4: 1, 8, 16, 32), or 0 for no Mixup")
    if s.m is not None and s.batch_size % s.m:
        raise UserError(f"m={s.m} does not divide batch_size={s.batch_size}: pick m from the "
                        "divisors of the batch (or m=null: the whole batch, no shards)")
    if s.schedule.warmup_epochs >= s.epochs:
        raise UserError(f"schedule.warmup_epochs={s.schedule.warmup_epochs}: must be a number "
                        f"in [0, epochs={s.epochs})")
    if s.is_sam and s.amp == "fp16":  # sam_step would refuse at step 1
        if s.optim.wd_mode != "base":
            raise UserError("amp=fp16 with optim.wd_mode=loss (fidelity=official): SAM's "
                            "GradScaler path supports only wd_mode=base; use amp=bf16, or "
                            "fidelity=pytorch")
        if s.m_impl == "vmap":
            raise UserError("amp=fp16 with m_impl=vmap: the batched shards do not support a "
                            "GradScaler; use m_impl=loop (or auto) or amp=bf16")
    if s.sharpness.on and s.sharpness.iters < s.sharpness.k:
        raise UserError(f"sharpness.iters={s.sharpness.iters} < k={s.sharpness.k}: raise iters "
                        "(20 or more for converged values)")
    late = [e for e in s.sharpness.epochs if e > s.epochs]
    if late:
        raise UserError(f"sharpness.epochs names epoch {late[0]} of a {s.epochs}-epoch run: "
                        f"list epochs in [1, {s.epochs}] (or raise epochs)")
    d = s.dataset
    if d.channels != 3:  # fashion_mnist: 1 x 28 x 28
        if s.augment.name == "autoaugment":
            raise UserError(f"augment=autoaugment with dataset={d.name}: AutoAugment needs RGB "
                            "images; use augment=basic or cutout (the paper's rows)")
        if d.fallback_synthetic:
            raise UserError(f"dataset.fallback_synthetic=true with dataset={d.name}: the "
                            "synthetic data is RGB 32x32; set it false")


def _ablations(s: Settings) -> list[str]:
    """The paper's ablations (C.4-C.6) switched on in the optim group."""
    o = s.optim
    return [name for name, on in (("ascent_steps", o.ascent_steps > 1),
                                  ("second_order", o.second_order),
                                  ("ascent=random", o.ascent == "random")) if on]


def _check_variant(s: Settings) -> None:
    """A SAM variant's options that cannot run together, or with this precision."""
    o = s.optim
    if o.variant == "looksam" and o.k is None:
        raise UserError("optim.k=null: LookSAM needs an integer >= 1 (a SAM step every k)")
    if o.rho_min is not None and o.rho_min > o.rho:
        raise UserError(f"optim.rho_min={o.rho_min}: must be in [0, rho={o.rho}], or null")
    if o.rho_min is not None and o.rho_min < o.rho:
        _check_gsam_schedule(s)
    ablations = _ablations(s)
    if len(ablations) > 1:
        raise UserError(f"optim: {' and '.join(ablations)} are separate ablations: set one "
                        "of them")
    if ablations and (o.p != 2 or o.adaptive):
        raise UserError(f"optim.{ablations[0]} needs optim.p=2 and optim.adaptive=false")
    if o.second_order and s.amp == "fp16":
        raise UserError("optim.second_order with amp=fp16: the Hessian pass has no "
                        "GradScaler; use amp=bf16 or off")
    if o.variant == "looksam" and s.amp == "fp16":
        raise UserError("optim=looksam with amp=fp16: an overflowing SAM step would be kept "
                        "as g_v; use amp=bf16 or off")


def _check_base(s: Settings) -> None:
    """The base optimizer's options (sam.optim.bases) and its weight-decay convention."""
    o = s.optim
    if len(o.betas) != 2:
        raise UserError(f"optim.betas={list(o.betas)}: give two numbers, [beta1, beta2]")
    if o.base == "adamw" and o.wd_mode == "loss":
        raise UserError("optim.base=adamw with optim.wd_mode=loss (fidelity=official): AdamW's "
                        "decay is decoupled, the official convention an L2 term in the loss; "
                        "use optim.base=adam (L2 in the loss) or optim.wd_mode=base")


def _check_gsam_schedule(s: Settings) -> None:
    """GSAM's rho_t = rho_min + (rho - rho_min)(lr_t - lr_min)/(lr - lr_min), unclamped as
    the authors' ProportionScheduler: lr_min must lie below the peak lr, and where lr_t
    nears 0 (a warmup's start, the cosine's end) rho_t must not turn negative, which
    needs lr_min/lr <= rho_min/rho."""
    o = s.optim
    if o.lr_min >= o.lr:
        raise UserError(f"optim.lr_min={o.lr_min} >= lr={o.lr}: GSAM's rho follows the lr "
                        "down from lr to lr_min; set lr_min below lr (0: the cosine's end)")
    if o.lr_min * o.rho > o.rho_min * o.lr:
        raise UserError(f"optim.lr_min={o.lr_min}: GSAM's rho_t (linear in the lr, not "
                        "clamped, as the authors') turns negative where the lr nears 0 (warmup, "
                        f"the cosine's end); use lr_min <= {o.rho_min * o.lr / o.rho:g} "
                        "(rho_min/rho x lr)")


def _check_accumulate(s: Settings) -> None:
    """What cannot be accumulated exactly (micro-batches: docs/accumulate.md)."""
    k = s.accumulate
    if k == 1:
        return
    if s.m_impl == "vmap":
        raise UserError(f"accumulate={k} with m_impl=vmap: micro-batches and shards run one "
                        "by one (that saves the memory); use m_impl=auto or loop")
    if not s.is_sam:
        return
    o = s.optim
    if o.variant == "looksam":
        raise UserError(f"accumulate={k} with optim=looksam: its reuse steps are not "
                        "accumulated; use accumulate=1 (or a smaller batch)")
    if o.ascent_steps != 1:
        raise UserError(f"accumulate={k} with optim.ascent_steps={o.ascent_steps}: the "
                        "ablation's ascent is not accumulated; use accumulate=1")
    if o.second_order:
        raise UserError(f"accumulate={k} with optim.second_order: the Hessian pass is not "
                        "accumulated; use accumulate=1")
    if o.ascent != "gradient":
        raise UserError(f"accumulate={k} with optim.ascent={o.ascent}: the ablation is not "
                        "accumulated; use accumulate=1")
