"""Checks of a resolved training config before anything is loaded or written.

``validate`` raises one ``UserError`` ("problem: fix") for the first setting that cannot
run, so a bad value fails at once instead of after the dataset and model are built (or,
worse, mid-run). The distributed and sharpness settings are checked by their own modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from sam import distributed
from sam.data import augment_options, dataset_options
from sam.data.image_loader import check_image_config
from sam.data.label_noise import check_label_noise
from sam.errors import UserError
from sam.optim.accumulate import accumulate_problem
from sam.optim.accumulate import config_problem as accumulate_config_problem
from sam.optim.variants import config_problem as variant_problem
from sam.runtime import resolve_device
from sam.sharpness import check_training_config


def validate(cfg: DictConfig) -> None:
    """Raise UserError (problem and fix on one line) for a config that cannot run."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    kinds = {"epochs": _is_int, "batch_size": _is_int, "eval_batch_size": _is_int,
             "seed": _is_int, "lr": _is_number, "lam": _is_number}
    if cfg.optim.name == "sam":
        kinds["rho"] = _is_number
    for key, is_kind in kinds.items():
        value = cfg[key]
        need(is_kind(value), f"{key}={value!r}: must be a number "
             f"({'an integer' if is_kind is _is_int else 'a float'})")
    need(cfg.m is None or _is_int(cfg.m), f"m={cfg.m!r}: must be an integer or null")
    need(cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1")
    every = cfg.get("checkpoint_every_steps", 0)
    need(_is_int(every) and every >= 0,
         f"checkpoint_every_steps={every!r}: must be an integer >= 0 (0: after epochs only)")
    _validate_groups(cfg, need)
    d = cfg.dataset
    for key in ("subset", "test_subset"):
        need(d[key] is None or (isinstance(d[key], int) and d[key] >= 1),
             f"dataset.{key}={d[key]}: must be a positive integer or null")
    check_label_noise(d.get("label_noise", 0.0), d.get("label_noise_mode", "uniform"))
    need(d.get("noise_seed") is None or _is_int(d.noise_seed),
         f"dataset.noise_seed={d.get('noise_seed')!r}: must be an integer or null (= seed)")
    need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be >= 1")
    need(cfg.eval_batch_size >= 1, f"eval_batch_size={cfg.eval_batch_size}: must be >= 1")
    need(cfg.lr > 0, f"lr={cfg.lr}: must be > 0")
    need(cfg.lam >= 0, f"lam={cfg.lam}: must be >= 0")
    need(cfg.amp in ("auto", "bf16", "fp16", "off"), f"amp={cfg.amp}: use auto, bf16, fp16 or off")
    need(cfg.m_impl in ("auto", "loop", "vmap"), f"m_impl={cfg.m_impl}: use auto, loop or vmap")
    if cfg.optim.name == "sam" and cfg.amp == "fp16":  # sam_step would refuse at step 1
        need(cfg.optim.get("wd_mode", "base") == "base",
             "amp=fp16 with optim.wd_mode=loss (fidelity=official): SAM's GradScaler path "
             "supports only wd_mode=base; use amp=bf16, or fidelity=pytorch")
        need(cfg.m_impl != "vmap", "amp=fp16 with m_impl=vmap: the batched shards do not "
             "support a GradScaler; use m_impl=loop (or auto) or amp=bf16")
    device = resolve_device(cfg.device)
    need(cfg.amp != "fp16" or device.type == "cuda",
         "amp=fp16 needs CUDA: use amp=bf16 or amp=off on cpu")
    if cfg.optim.name == "sam":
        need(cfg.optim.rho >= 0, f"rho={cfg.optim.rho}: must be >= 0 (0.05 is the paper's)")
        need(cfg.optim.p in (2, math.inf), f"optim.p={cfg.optim.p}: must be 2 or .inf")
        world, m = distributed.env_world_size(), distributed.local_m(cfg)
        problem = variant_problem(cfg.optim, cfg.amp, m is not None and
                                  m < cfg.batch_size // max(world, 1), world,
                                  bool(cfg.get("ddp_sync_ascent")), cfg.m_impl)
        need(problem is None, str(problem))  # SAM variants (sam/optim/variants.py)
    if "wd_mode" in cfg.optim:
        need(cfg.optim.wd_mode in ("base", "loss"),
             f"optim.wd_mode={cfg.optim.wd_mode}: must be base or loss")
    if cfg.m is not None:
        need(cfg.m >= 1 and cfg.batch_size % cfg.m == 0,
             f"m={cfg.m} does not divide batch_size={cfg.batch_size}: pick m from the "
             f"divisors of the batch (or m=null: the whole batch, no shards)")
    distributed.check_config(cfg, device)
    accumulate = cfg.get("accumulate", 1)  # micro-batches of each rank's batch
    problem = accumulate_problem(cfg.batch_size // max(distributed.env_world_size(), 1),
                                 distributed.local_m(cfg), accumulate)
    if problem is None:
        problem = accumulate_config_problem(accumulate, cfg.optim if cfg.optim.name == "sam"
                                            else None, cfg.m_impl)
    need(problem is None, str(problem))
    check_training_config(cfg)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_groups(cfg: DictConfig, need: Callable[[bool, str], None]) -> None:
    """The settings inside the groups that would otherwise fail (or mislead) mid-run."""
    o, s, d = cfg.optim, cfg.schedule, cfg.dataset
    need(_is_number(o.get("momentum", 0)) and o.get("momentum", 0) >= 0,
         f"optim.momentum={o.get('momentum')}: must be a number >= 0 (0.9 is the paper's)")
    clip = o.get("max_grad_norm")
    need(clip is None or (_is_number(clip) and clip > 0),
         f"optim.max_grad_norm={clip}: must be a number > 0, or null (no clipping)")
    if o.name == "sam":
        eta = o.get("eta", 0.01)
        need(_is_number(eta) and eta >= 0, f"optim.eta={eta}: must be a number >= 0")
    if "warmup_epochs" in s:
        w = s.warmup_epochs
        need(_is_number(w) and 0 <= w < cfg.epochs,
             f"schedule.warmup_epochs={w}: must be a number in [0, epochs={cfg.epochs})")
    if "milestones" in s:
        need(all(_is_number(f) and 0 < f < 1 for f in s.milestones),
             f"schedule.milestones={list(s.milestones)}: must be fractions of training, "
             f"each in (0, 1)")
        need(_is_number(s.gamma) and s.gamma > 0,
             f"schedule.gamma={s.gamma}: must be a number > 0 (0.2 multiplies lr by 0.2)")
    need(_is_number(d.val_fraction) and 0 <= d.val_fraction < 1,
         f"dataset.val_fraction={d.val_fraction!r}: must be a number in [0, 1)")
    for key in ("train_size", "test_size"):
        if key in d:
            need(_is_int(d[key]) and d[key] >= 1,
                 f"dataset.{key}={d[key]!r}: must be a positive integer")
    need(_is_int(cfg.nan_check_every) and cfg.nan_check_every >= 1,
         f"nan_check_every={cfg.nan_check_every!r}: must be an integer >= 1")
    smoothing = cfg.get("label_smoothing", 0.0)
    need(_is_number(smoothing) and 0 <= smoothing < 1,
         f"label_smoothing={smoothing!r}: must be a number in [0, 1) (0.1 is the paper's "
         "ImageNet value)")
    for key in ("wd_exclude_norm_bias", "bn_eval_mode"):
        need(isinstance(cfg.get(key, False), bool), f"{key}={cfg.get(key)!r}: must be true "
             "or false")
    augment_options(cfg.augment)  # pad_mode, num_workers, cutout_per_image, policy
    dataset_options(d)  # flip, aa_policy, aa_crop_flip
    check_image_config(cfg)  # image datasets: what the DataLoader path cannot do
    if d.get("channels", 3) != 3:  # fashion_mnist: 1 x 28 x 28
        need(cfg.augment.name != "autoaugment", f"augment=autoaugment with dataset={d.name}: "
             "AutoAugment needs RGB images; use augment=basic or cutout (the paper's rows)")
        need(not d.get("fallback_synthetic"), f"dataset.fallback_synthetic=true with "
             f"dataset={d.name}: the synthetic data is RGB 32x32; set it false")
