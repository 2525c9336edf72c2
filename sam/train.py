"""The training loop: one SGD or SAM run from a resolved config, resumable.

``run(cfg, run_dir)`` validates the config, loads data to the device, trains
``cfg.epochs`` epochs with ``sam_step``, evaluates after each epoch, logs to
TensorBoard, checkpoints ``checkpoints/last.pt`` and updates ``results.json``.
A run directory that already holds a checkpoint is resumed; a complete one is
left untouched.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import sam
from sam import distributed
from sam.data import check_pad_mode, load_dataset, make_loader
from sam.errors import UserError
from sam.measure import check_training_config, epoch_sharpness
from sam.optim import sam_step
from sam.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    atomic_write,
    comparable_config,
    config_diff,
    load_checkpoint,
    read_json,
    remove_stale_temps,
    save_checkpoint,
    write_json,
)

log = logging.getLogger(__name__)

# What the trainer does with a config, numbered; checkpoints record it, and a resume across
# a change that alters how its config trains is refused (_refuse_changed_semantics).
#   1: the first version.  2: m applies to plain optimizers too (BatchNorm shards).
#   3: AutoAugment runs before the crop and flip, filling with grey (was: after, black).
SEMANTICS = 3


class Diverged(Exception):
    """The training loss became NaN or inf at (epoch, step), both counted from 1."""

    def __init__(self, step: int, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch
        super().__init__(f"loss became NaN/inf in epoch {epoch}, step {step}: lower lr or "
                         "rho; the last good checkpoint is kept")


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
    _validate_groups(cfg, need)
    d = cfg.dataset
    for key in ("subset", "test_subset"):
        need(d[key] is None or (isinstance(d[key], int) and d[key] >= 1),
             f"dataset.{key}={d[key]}: must be a positive integer or null")
    need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be >= 1")
    need(cfg.eval_batch_size >= 1, f"eval_batch_size={cfg.eval_batch_size}: must be >= 1")
    need(cfg.lr > 0, f"lr={cfg.lr}: must be > 0")
    need(cfg.lam >= 0, f"lam={cfg.lam}: must be >= 0")
    need(cfg.amp in ("auto", "bf16", "fp16", "off"), f"amp={cfg.amp}: use auto, bf16, fp16 or off")
    need(cfg.m_impl in ("auto", "loop", "vmap"), f"m_impl={cfg.m_impl}: use auto, loop or vmap")
    if cfg.optim.name == "sam" and cfg.amp == "fp16":  # sam_step would refuse at step 1
        need(cfg.optim.get("wd_mode", "base") == "base",
             "amp=fp16 with optim.wd_mode=loss: the GradScaler path supports only "
             "wd_mode=base; use amp=bf16 or optim.wd_mode=base")
        need(cfg.m_impl != "vmap", "amp=fp16 with m_impl=vmap: the batched shards do not "
             "support a GradScaler; use m_impl=loop (or auto) or amp=bf16")
    device = resolve_device(cfg.device)
    need(cfg.amp != "fp16" or device.type == "cuda",
         "amp=fp16 needs CUDA: use amp=bf16 or amp=off on cpu")
    if cfg.optim.name == "sam":
        need(cfg.optim.rho >= 0, f"rho={cfg.optim.rho}: must be >= 0 (0.05 is the paper's)")
        need(cfg.optim.p in (2, math.inf), f"optim.p={cfg.optim.p}: must be 2 or .inf")
        need(cfg.optim.wd_mode in ("base", "loss"),
             f"optim.wd_mode={cfg.optim.wd_mode}: must be base or loss")
    if cfg.m is not None:
        need(cfg.m >= 1 and cfg.batch_size % cfg.m == 0,
             f"m={cfg.m} does not divide batch_size={cfg.batch_size}: pick m from the "
             f"divisors of the batch (or m=null: the whole batch, no shards)")
    distributed.check_config(cfg, device)
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
    if o.name == "sam":
        clip = o.get("max_grad_norm")
        need(clip is None or (_is_number(clip) and clip > 0),
             f"optim.max_grad_norm={clip}: must be a number > 0, or null (no clipping)")
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
    check_pad_mode(cfg.augment.get("pad_mode", "reflect"))
    workers = cfg.augment.get("num_workers", 0)
    need(_is_int(workers) and workers >= 0,
         f"augment.num_workers={workers!r}: must be an integer >= 0")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name}: not a torch device; use auto, cpu, cuda or cuda:N"
                        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available: use device=auto or cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch (all devices); deterministic algorithms when asked."""
    torch.manual_seed(seed)
    if deterministic:  # cuBLAS is deterministic only with a fixed workspace (CUDA docs)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


@dataclass
class Data:
    train: Any
    eval: Any
    num_classes: int
    name: str
    eval_split: str
    source: str
    splits: Any = None  # the uint8 CPU tensors behind the loaders (sharpness subset)


def load_splits(cfg: DictConfig):
    """The run's dataset as uint8 CPU tensors (synthetic fallback when allowed)."""
    d = cfg.dataset
    kwargs = dict(subset=d.subset, val_fraction=d.val_fraction, seed=cfg.seed)
    try:
        if d.name == "synthetic":
            splits = load_dataset("synthetic", "", synthetic_size=(d.train_size, d.test_size),
                                  **kwargs)
        else:
            splits = load_dataset(d.name, d.data_dir, download=d.download, verify=d.verify,
                                  **kwargs)
    except UserError as err:
        if not d.get("fallback_synthetic"):
            raise
        log.warning("NOTICE: %s -- falling back to SYNTHETIC data; these results are not %s",
                    err, d.name)
        splits = load_dataset("synthetic", "", synthetic_size=(4096, 1024), **kwargs)
    return splits


def build_data(cfg: DictConfig, device: torch.device) -> Data:
    """Load the dataset (synthetic fallback when allowed) and make the two loaders."""
    d = cfg.dataset
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
                        num_workers=cfg.augment.get("num_workers", 0),
                        pad_mode=cfg.augment.get("pad_mode", "reflect"), **common)
    evaluation = make_loader(eval_x, eval_y, batch_size=cfg.eval_batch_size, augment="none",
                             shuffle=False, drop_last=False, num_workers=0, **common)
    return Data(train, evaluation, splits.num_classes, splits.name,
                getattr(splits, "eval_split", "test"), splits.source, splits=splits)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate the optim group (a partial of SAM or SGD) on the model's parameters."""
    optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
    del optim_cfg["name"]
    return instantiate(optim_cfg)(model.parameters())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (not emulated): a CUDA card with bf16
    units (Ampere and later), or a CPU with AVX512-BF16 or AMX instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch's own CPU-feature probes (private: a torch without them counts as no bf16)
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(probe is not None and probe() for probe in probes)


def amp_settings(amp: str, device: torch.device):
    """(autocast dtype or None, GradScaler or None) for the ``amp`` setting (auto, bf16,
    fp16, off) on this device (``validate`` has refused fp16 off CUDA); auto is bf16 where
    the device computes it natively, else fp32."""
    if amp == "auto":
        amp = "bf16" if native_bf16(device) else "off"
    if amp == "fp16":
        return torch.float16, torch.amp.GradScaler("cuda")
    return (torch.bfloat16 if amp == "bf16" else None), None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The training precision as results.json records it: bf16, fp16 (autocast) or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")


def precision_change(history: list[dict], precision: str) -> str | None:
    """A warning when a resumed run goes on in another precision than its last epoch had
    (amp=auto resolves per device: bf16 where native, else fp32), else None."""
    before = history[-1].get("precision") if history else None
    if before is None or before == precision:
        return None
    return (f"resuming a run trained in {before} with {precision} on this device: its "
            f"epochs record each precision; start a new run to keep one")


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

    def result(self) -> tuple[float, float, int]:
        """(mean loss, error %, images) over all ranks; Diverged if any loss was NaN/inf."""
        _raise_if_bad(int(distributed.first_step_across_ranks(self.first_bad)))
        loss_sum, wrong, seen = distributed.sum_across_ranks(self.loss_sum, self.wrong,
                                                             self.seen)  # under DDP
        return loss_sum.item() / seen, 100.0 * wrong.item() / seen, seen


def _raise_if_bad(first_bad: int) -> None:
    if first_bad:
        raise Diverged(first_bad)


def train_epoch(model, optimizer, scheduler, loader, cfg, amp_dtype, scaler, device, progress):
    """One epoch of sam_step; returns (mean loss, error %, images) read once at the end
    (Diverged on a NaN/inf loss: see EpochMeter)."""
    model.train()
    meter = EpochMeter(device, cfg.nan_check_every)
    channels_last = bool(cfg.channels_last)
    local_m, sync_ascent = distributed.local_m(cfg), cfg.get("ddp_sync_ascent", False)
    for x, y in tqdm(loader, disable=not progress, leave=False, unit="batch"):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, out = sam_step(model, optimizer, F.cross_entropy, x, y, m=local_m,
                             amp_dtype=amp_dtype, scaler=scaler, return_outputs=True,
                             sync_ascent=sync_ascent, shard_impl=cfg.m_impl)
        scheduler.step()
        meter.update(loss, out, y)
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


def _versions() -> dict[str, str]:
    import hydra
    import torchvision

    return {"sam": sam.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__,
            "python": platform.python_version()}


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu (<model name>, <N> threads)" (the model from /proc/cpuinfo
    where there is one: its instruction set decides amp=auto's precision)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _summary(cfg: DictConfig, choices: dict[str, str], data_name: str, eval_split: str) -> dict:
    is_sam = cfg.optim.name == "sam"
    return {"dataset": data_name, "model": choices.get("model", cfg.model._target_),
            "augment": cfg.augment.name, "optim": cfg.optim.name,
            "rho": cfg.optim.rho if is_sam else None, "m": cfg.m,  # SGD: BatchNorm shards
            "epochs": cfg.epochs, "seed": cfg.seed, "batch_size": cfg.batch_size,
            # what the optimizer got (the long forms optim.lr / optim.weight_decay too)
            "lr": cfg.optim.get("lr", cfg.lr), "lam": cfg.optim.get("weight_decay", cfg.lam),
            "eval_split": eval_split}


def _flat_hparams(summary: dict) -> dict:
    return {k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in summary.items()}


def run(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None,
        choices: dict[str, str] | None = None, multirun: bool = False,
        invocation_files: dict[str, Any] | None = None) -> dict:
    """Train one run into ``run_dir``; return its results dict (also in results.json).

    ``invocation_files`` (name -> config node, e.g. Hydra's config.yaml, hydra.yaml and
    overrides.yaml) go to ``run_dir/.hydra/`` once the directory is accepted for this
    config: see :func:`_write_invocation`.
    """
    run_dir = Path(run_dir)
    validate(cfg)
    device = distributed.init(resolve_device(cfg.device))  # joins the ranks under torchrun
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's, on every rank
    main = distributed.is_main()  # only rank 0 logs, prints and writes files
    config = OmegaConf.to_container(cfg, resolve=True)
    results_path = run_dir / RESULTS_FILE
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    previous = _previous_results(results_path, config)
    if previous is not None and previous["status"] == "complete":
        log.info("run in %s is already complete (final test error %.2f%%): nothing to do",
                 run_dir, previous["final"]["test_error"])
        return previous
    seed_everything(cfg.seed, cfg.deterministic)
    data = build_data(cfg, device)
    data.train, data.eval = distributed.shard(data.train), distributed.shard(data.eval)
    net = instantiate(cfg.model).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if cfg.compile else net
    train_model = distributed.wrap(model, device, cfg.get("sync_bn", False))  # DDP or model
    distributed.seed_rank(cfg.seed)  # distinct dropout/shake noise on each rank
    optimizer = build_optimizer(cfg, net)
    steps = len(data.train)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=cfg.epochs * steps,
                                          steps_per_epoch=steps)
    amp_dtype, scaler = amp_settings(cfg.amp, device)
    results = {
        "schema_version": SCHEMA_VERSION, "status": "running", "error": None,
        "summary": _summary(cfg, choices or {}, data.name, data.eval_split),
        "overrides": list(overrides or []), "config": config, "data_source": data.source,
        "history": [], "final": None, "wall_time_s": 0.0, "images_per_sec": None,
        "device": device_name(device), "precision": precision_name(amp_dtype),
        "versions": _versions(),
        "started_at": _now(), "updated_at": _now(),
    }
    if distributed.is_distributed():
        results["distributed"] = distributed.describe(cfg)
        # per-rank ascent makes each rank a shard: the report must see that m
        results["summary"]["m"] = results["distributed"]["effective_m"]
    start_epoch = 0
    state, _, note = load_checkpoint(ckpt_path)
    if note:
        log.warning(note)
    if state is not None:
        _refuse_other_config(state["config"], config, run_dir)
        _refuse_changed_semantics(state, cfg, run_dir)
        _refuse_other_world_size(state, run_dir)
        _restore(state, net, optimizer, scheduler, scaler, device)
        start_epoch = state["epoch"]
        results.update(history=state["history"], wall_time_s=state["wall_time_s"],
                       started_at=state["started_at"])
        log.info("resuming %s from epoch %d", run_dir, start_epoch)
        if note := precision_change(state["history"], results["precision"]):
            log.warning(note)
    progress = _progress_enabled(cfg, multirun) and main
    if main and invocation_files:
        _write_invocation(run_dir, invocation_files, fresh=state is None)
    distributed.barrier()  # every rank has read the run directory before rank 0 writes
    writer = (SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1)
              if main else _NoWriter())
    if main:
        for folder in (run_dir, ckpt_path.parent):
            remove_stale_temps(folder)
        write_json(results_path, results)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            data.train.set_epoch(epoch)
            try:
                train_loss, train_error, seen = train_epoch(
                    train_model, optimizer, scheduler, data.train, cfg, amp_dtype, scaler,
                    device, progress)
            except Diverged as div:
                raise Diverged(div.step, epoch + 1) from None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            # eager: a compiled model would recompile for eval mode and the last batch
            test_loss, test_error = evaluate(net, data.eval, amp_dtype, device)
            epoch_time = time.perf_counter() - t0
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
                       "test_loss": test_loss, "test_error": test_error,
                       "lr": optimizer.param_groups[0]["lr"],
                       "images_per_sec": seen / train_time, "epoch_time_s": epoch_time,
                       "precision": results["precision"]}
            _log_epoch(writer, metrics)
            log.info("epoch %d/%d  train loss %.4f err %.2f%%  %s loss %.4f err %.2f%%  "
                     "%.0f img/s", epoch + 1, cfg.epochs, train_loss, train_error,
                     data.eval_split, test_loss, test_error, metrics["images_per_sec"])
            metrics.update(epoch_sharpness(cfg, net, data.splits, epoch + 1, writer))
            results["history"].append(metrics)
            results["wall_time_s"] += epoch_time
            results["updated_at"] = _now()
            rng_ranks = distributed.rng_states(device)  # collective: before `if main`
            if main:
                save_checkpoint(ckpt_path, _checkpoint(net, optimizer, scheduler, scaler,
                                                       epoch + 1, config, results, device,
                                                       rng_ranks))
                write_json(results_path, results)
        history = results["history"]
        results["final"] = {k: history[-1][k] for k in
                            ("epoch", "train_loss", "train_error", "test_loss", "test_error")}
        results["images_per_sec"] = sum(h["images_per_sec"] for h in history) / len(history)
        results["status"] = "complete"
        writer.add_hparams(_flat_hparams(results["summary"]),
                           {f"hparam/final_{k}": v for k, v in results["final"].items()
                            if k != "epoch"}, run_name=".")
    except BaseException as err:
        results["status"] = "diverged" if isinstance(err, Diverged) else "failed"
        if isinstance(err, Diverged):
            results["diverged_at"] = {"epoch": err.epoch, "step": err.step}
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        results["updated_at"] = _now()
        if main:
            write_json(results_path, results)
        writer.close()
    return results


class _NoWriter:
    """SummaryWriter stand-in for ranks > 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _previous_results(path: Path, config: dict) -> dict | None:
    """An earlier results.json of this directory, refusing one of another config."""
    if not path.exists():
        return None
    try:
        previous = read_json(path)
    except ValueError:
        return None
    if previous.get("summary") is None and not previous.get("history"):
        return None  # a sweep job refused before it began (sam.cli): nothing to protect
    _refuse_other_config(previous.get("config", {}), config, path.parent)
    return previous


def _write_invocation(run_dir: Path, files: dict[str, Any], fresh: bool) -> None:
    """Write each config node as YAML to ``run_dir/.hydra/<name>``: all of them when the
    run starts fresh, only the missing ones when it resumes (they describe the invocation
    that started it). Called after the directory's checks, so an invocation that is
    refused (another config, a bad value, an already complete run) never rewrites them."""
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in files.items():
        path = folder / name
        if fresh or not path.exists():
            text = OmegaConf.to_yaml(node)
            atomic_write(path, lambda f, text=text: f.write(text))


def _refuse_other_config(stored: dict, config: dict, run_dir: Path) -> None:
    """UserError when a run directory holds a run of another config."""
    if comparable_config(stored) != comparable_config(config):
        raise UserError(f"{run_dir} holds a run with a different config "
                        f"({config_diff(stored, config)}): use a new run directory "
                        "(hydra.run.dir=...) or the original overrides")


def _refuse_changed_semantics(state: dict, cfg: DictConfig, run_dir: Path) -> None:
    """UserError when the checkpoint was written under semantics that trained this config
    differently (resuming would change the method mid-run); see SEMANTICS."""
    m = distributed.local_m(cfg)
    if (state.get("semantics", 1) < 2 and cfg.optim.name != "sam" and m is not None
            and m < cfg.batch_size // distributed.world_size()):
        raise UserError(f"{run_dir} began when m did not apply to {cfg.optim.name} "
                        "(BatchNorm over the whole batch); this version gives it BatchNorm "
                        f"shards of m={m}: train it in a new run directory")
    if state.get("semantics", 1) < 3 and cfg.augment.name == "autoaugment":
        raise UserError(f"{run_dir} began when AutoAugment ran after the crop and flip; this "
                        "version runs it before them, as the official code: train it in a "
                        "new run directory")


def _refuse_other_world_size(state: dict, run_dir: Path) -> None:
    """UserError when the checkpoint was written by another number of processes: the
    per-rank batch sets BatchNorm's batches and SAM's per-rank eps (m), and every rank's
    RNG state is in the checkpoint, so a run continues with the world it began with."""
    before = distributed.checkpoint_world_size(state)
    now = distributed.world_size()
    if before != now:
        raise UserError(f"{run_dir} was trained by {before} process(es), this is {now}: "
                        f"resume it with {before} (torchrun --nproc_per_node={before}, or "
                        "without torchrun for 1), or train it in a new run directory")


def _checkpoint(net, optimizer, scheduler, scaler, epoch: int, config: dict, results: dict,
                device: torch.device, rng_ranks: Any) -> dict:
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule,
    loss scale, RNG states, and the history so far."""
    return {
        "model": net.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "config": config, "history": results["history"],
        "wall_time_s": results["wall_time_s"], "started_at": results["started_at"],
        "rng": distributed.rng_state(device), "rng_ranks": rng_ranks,
        "semantics": SEMANTICS,
    }


def _restore(state: dict, net, optimizer, scheduler, scaler, device: torch.device) -> None:
    """Load a ``_checkpoint`` into the live objects and the RNGs."""
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    distributed.set_rng_state(state["rng"], device)
    distributed.restore_rng(state.get("rng_ranks"), device)


def _progress_enabled(cfg: DictConfig, multirun: bool) -> bool:
    if cfg.progress == "auto":
        return sys.stderr.isatty() and not multirun
    return bool(cfg.progress)


def _log_epoch(writer: SummaryWriter, m: dict) -> None:
    step = m["epoch"]
    for key in ("train_loss", "train_error", "test_loss", "test_error"):
        writer.add_scalar(key.replace("_", "/", 1), m[key], step)
    writer.add_scalar("lr", m["lr"], step)
    writer.add_scalar("images_per_sec", m["images_per_sec"], step)
    writer.flush()
