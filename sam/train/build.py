"""What one run trains, built from its config: data loaders, model, optimizer, schedule and
precision (the config groups ``dataset``, ``augment``, ``model``, ``optim``, ``schedule``).

``build`` makes them in a fixed order (seed, data, weights, per-rank reseed, optimizer):
the order of the random draws, which a deterministic run reproduces bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sam import distributed
from sam.data import augment_options, dataset_options, load_splits, make_loader
from sam.data.image_loader import IMAGE_SETS, image_loaders, image_stats
from sam.errors import UserError
from sam.optim import exclude_from_weight_decay, param_groups
from sam.runtime import amp_settings, seed_everything


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


def build(cfg: DictConfig, device: torch.device) -> Setup:
    """Seed, load the data and make the model, optimizer, schedule and precision."""
    seed_everything(cfg.seed, cfg.deterministic)
    data = build_data(cfg, device)
    data.train, data.eval = distributed.shard(data.train), distributed.shard(data.eval)
    net = instantiate(cfg.model, **model_inputs(cfg, data)).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if cfg.compile else net
    model = distributed.wrap(model, device, cfg.get("sync_bn", False))  # DDP or model
    distributed.seed_rank(cfg.seed)  # distinct dropout/shake noise on each rank
    optimizer = build_optimizer(cfg, net)
    steps = len(data.train)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=cfg.epochs * steps,
                                          steps_per_epoch=steps)
    amp_dtype, scaler = amp_settings(cfg.amp, device)
    return Setup(device, data, net, model, optimizer, scheduler, amp_dtype, scaler)


def model_inputs(cfg: DictConfig, data: Data) -> dict[str, Any]:
    """What a model that un-normalizes its batches (model=timm, docs/finetune.md) must know
    of the loaders, where its config leaves ``in_mean``/``in_std`` null: their mean/std."""
    if cfg.model.get("in_mean", "unused") is not None:
        return {}
    if data.splits is not None:
        mean, std = data.splits.mean, data.splits.std
    else:  # the image sets' loaders: dataset.mean/std, ImageNet's when null
        mean, std = image_stats(cfg.dataset)
    return {"in_mean": list(mean), "in_std": list(std)}


def build_data(cfg: DictConfig, device: torch.device) -> Data:
    """Load the dataset (synthetic fallback when allowed) and make the two loaders."""
    d = cfg.dataset
    if d.name in IMAGE_SETS:  # image files through DataLoader workers; no uint8 splits
        sets, train, evaluation = image_loaders(cfg, device)
        return Data(train, evaluation, sets.num_classes, sets.name, "test", sets.source)
    splits = load_splits(cfg)
    eval_x, eval_y = splits.test_x, splits.test_y
    if d.test_subset is not None:
        eval_x, eval_y = eval_x[: d.test_subset], eval_y[: d.test_subset]
    if len(splits.train_x) < cfg.batch_size:
        raise UserError(f"only {len(splits.train_x)} training images for batch_size="
                        f"{cfg.batch_size}: lower batch_size or raise dataset.subset")
    common = dict(device=device, mean=splits.mean, std=splits.std, seed=cfg.seed)
    train = make_loader(splits.train_x, splits.train_y, batch_size=cfg.batch_size,
                        augment=cfg.augment.name, shuffle=True, drop_last=True,
                        **augment_options(cfg.augment), **dataset_options(d), **common)
    evaluation = make_loader(eval_x, eval_y, batch_size=cfg.eval_batch_size, augment="none",
                             shuffle=False, drop_last=False, num_workers=0, **common)
    return Data(train, evaluation, splits.num_classes, splits.name,
                getattr(splits, "eval_split", "test"), splits.source, splits=splits)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate the optim group (a partial of SAM, a SAM variant or SGD) on the model's
    parameters: SAM's param groups by ``optim.perturb`` (SAM-ON: norm layers only), the
    1-d parameters without weight decay (``wd_exclude_norm_bias``), the run's seed for
    ``optim.ascent=random``."""
    optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
    del optim_cfg["name"]
    optim_cfg.pop("variant", None)
    perturb = optim_cfg.pop("perturb", "all")
    try:
        params = param_groups(model, optim_cfg.get("rho", 0.0), perturb)
    except ValueError as err:  # SAM-ON on a model without normalization layers
        raise UserError(f"{err}: use optim.perturb=all (or a model with them)") from None
    if cfg.get("wd_exclude_norm_bias", False):
        params = exclude_from_weight_decay(params)
    if optim_cfg.get("ascent") == "random":
        optim_cfg["seed"] = cfg.seed
    return instantiate(optim_cfg)(params)
