"""What one run trains, built from its settings: data loaders, model, optimizer, schedule and
precision (the groups ``dataset``, ``augment``, ``model``, ``optim``, ``schedule``).

``build`` makes them in a fixed order (seed, data, weights, per-rank reseed, optimizer):
the order of the random draws, which a deterministic run reproduces bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from sam import distributed
from sam.data import augment_options, dataset_options, load_splits, make_loader
from sam.data.image_loader import IMAGE_SETS, image_loaders, image_stats
from sam.data.mixup import MixupLoader
from sam.errors import UserError
from sam.optim import BASE_OPTIONS, base_optimizer, exclude_from_weight_decay, param_groups
from sam.runtime import fp32_precision, grad_scaler, seed_everything, set_fp32_precision
from sam.settings import Settings
from sam.train.placement import Placement


@dataclass
class Data:
    """The run's two loaders and what results.json says about their data."""

    train: Any
    eval: Any
    num_classes: int
    name: str
    eval_split: str
    source: str
    splits: Any = None  # the uint8 CPU tensors behind the loaders (sharpness subset);
    # None for the image datasets (sam.data.image_sets), whose eval split counts as "test"
    bootstrap: dict | None = None  # the bootstrap labels' record (sam.train.bootstrap)


@dataclass
class Setup:
    """The live objects of one run: what its epochs train, evaluate and checkpoint."""

    device: torch.device
    data: Data
    net: nn.Module  # the eager model: evaluation, checkpoints, sharpness
    model: nn.Module  # what trains: ``net`` compiled (compile=true) and wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    scaler: torch.amp.GradScaler | None  # fp16 only
    fp32_precision: dict[str, str]  # what convolutions and matmuls compute in


def build(s: Settings, place: Placement, relabel: Callable | None = None) -> Setup:
    """Seed, load the data and make the model, optimizer, schedule and precision
    (``relabel``: sets the training labels, see ``build_data``)."""
    device = place.device
    seed_everything(s.seed, s.deterministic)
    set_fp32_precision(s.fidelity.fp32_precision)
    computed = {"setting": s.fidelity.fp32_precision, **fp32_precision(device, place.amp_dtype)}
    data = build_data(s, device, relabel)
    data.train = distributed.shard(data.train, place.rank, place.world)
    data.eval = distributed.shard(data.eval, place.rank, place.world)
    net = initial_model(s, data).to(device)
    if s.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if s.compile else net
    if place.ddp:
        model = distributed.wrap(model, device, s.sync_bn)
        distributed.seed_rank(s.seed)  # distinct dropout/shake noise on each rank
    optimizer = build_optimizer(s, net)
    steps = len(data.train)
    scheduler = instantiate(s.schedule.spec)(optimizer, total_steps=s.epochs * steps,
                                             steps_per_epoch=steps)
    return Setup(device, data, net, model, optimizer, scheduler, place.amp_dtype,
                 grad_scaler(place.amp_dtype), computed)


def initial_model(s: Settings, data: Data) -> nn.Module:
    """The model with its initial weights: drawn from the run's RNG stream (seeded by
    ``seed``) when ``init_seed`` is null or equal to it, else from a stream of ``init_seed``
    of its own (the official code's fixed PRNGKey(0)), leaving the run's stream as it was."""
    if s.init_seed is None or s.init_seed == s.seed:
        return instantiate(s.model.spec, **model_inputs(s, data))
    with torch.random.fork_rng(devices=[]):  # the model is made on the CPU
        torch.manual_seed(s.init_seed)
        return instantiate(s.model.spec, **model_inputs(s, data))


def model_inputs(s: Settings, data: Data) -> dict[str, Any]:
    """What a model that un-normalizes its batches (model=timm, docs/finetune.md) must know
    of the loaders, where its config leaves ``in_mean``/``in_std`` null: their mean/std."""
    if s.model.spec.get("in_mean", "unused") is not None:
        return {}
    if data.splits is not None:
        mean, std = data.splits.mean, data.splits.std
    else:  # the image sets' loaders: dataset.mean/std, ImageNet's when null
        mean, std = image_stats(s.dataset)
    return {"in_mean": list(mean), "in_std": list(std)}


def build_data(s: Settings, device: torch.device, relabel: Callable | None = None) -> Data:
    """Load the dataset (synthetic fallback when allowed) and make the two loaders.
    ``relabel(splits, device)`` replaces the training labels and returns their record
    (``bootstrap``: sam.train.bootstrap); ``augment.mixup_alpha`` > 0 mixes the batches."""
    d = s.dataset
    if d.name in IMAGE_SETS:  # image files through DataLoader workers; no uint8 splits
        sets, train, evaluation = image_loaders(
            d, s.augment, seed=s.seed, batch_size=s.batch_size,
            eval_batch_size=s.eval_batch_size, device=device)
        return Data(with_mixup(train, s, sets.num_classes), evaluation, sets.num_classes,
                    sets.name, "test", sets.source)
    splits = load_splits(d, s.seed)
    record = relabel(splits, device) if relabel is not None else None
    eval_x, eval_y = splits.test_x, splits.test_y
    if d.test_subset is not None:
        eval_x, eval_y = eval_x[: d.test_subset], eval_y[: d.test_subset]
    if len(splits.train_x) < s.batch_size:
        raise UserError(f"only {len(splits.train_x)} training images for batch_size="
                        f"{s.batch_size}: lower batch_size or raise dataset.subset")
    common = dict(device=device, mean=splits.mean, std=splits.std, seed=s.seed)
    train = make_loader(splits.train_x, splits.train_y, batch_size=s.batch_size,
                        augment=s.augment.name, shuffle=True, drop_last=True,
                        **augment_options(s.augment), **dataset_options(d), **common)
    evaluation = make_loader(eval_x, eval_y, batch_size=s.eval_batch_size, augment="none",
                             shuffle=False, drop_last=False, num_workers=0, **common)
    return Data(with_mixup(train, s, splits.num_classes), evaluation, splits.num_classes,
                splits.name, getattr(splits, "eval_split", "test"), splits.source,
                splits=splits, bootstrap=record)


def with_mixup(train: Any, s: Settings, num_classes: int) -> Any:
    """The training loader, its batches mixed when ``augment.mixup_alpha`` > 0 (Mixup,
    sam.data.mixup: before DDP's slicing, so the global batch is mixed)."""
    alpha = s.augment.mixup_alpha
    return MixupLoader(train, alpha, num_classes, s.seed) if alpha else train


def build_optimizer(s: Settings, model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate the optim group (a partial of SAM, a SAM variant or SGD) on the model's
    parameters: around the base optimizer ``optim.base`` names, with its own options
    (sam.optim.bases), SAM's param groups by ``optim.perturb`` (SAM-ON: norm layers only),
    the 1-d parameters without weight decay (``wd_exclude_norm_bias``), the run's seed for
    ``optim.ascent=random``."""
    spec = {k: v for k, v in s.optim.spec.items()
            if k not in ("name", "variant", "perturb", "base", *BASE_OPTIONS)}
    cls, own = base_optimizer(s.optim.base, s.optim.spec)
    spec.update(own, base_optimizer={"_target_": "hydra.utils.get_class",
                                     "path": f"torch.optim.{cls.__name__}"})
    try:
        params = param_groups(model, spec.get("rho", 0.0), s.optim.perturb)
    except ValueError as err:  # SAM-ON on a model without normalization layers
        raise UserError(f"{err}: use optim.perturb=all (or a model with them)") from None
    if s.wd_exclude_norm_bias:
        params = exclude_from_weight_decay(params)
    if s.optim.ascent == "random":
        spec["seed"] = s.seed
    try:
        return instantiate(spec, _convert_="all")(params)  # lists as lists (betas)
    except ValueError as err:  # sam.optim speaks in its arguments' names
        raise UserError(f"optim: {err}: fix the optim.* setting") from None
