"""Sharpness of a trained (or training) network on a fixed subset of its training data.

Glue between the instruments of :mod:`sam.sharpness` (:mod:`~sam.sharpness.hessian`,
:mod:`~sam.sharpness.msharpness`) and the two places that use them: the trainer's optional
per-epoch logging (:func:`epoch_sharpness`, configured by the ``sharpness:`` block of
``configs/train.yaml``) and ``sam-sharpness`` (:mod:`sam.sharpness.job`).

- Data: a fixed subset of the training images drawn by a generator seeded with ``seed`` (no
  global RNG), without augmentation, normalized exactly like the training loader does.
- Hessian (lambda_max, lambda_max / lambda_5, trace, SLQ density): model in eval mode, so
  BatchNorm uses its running statistics and is a fixed function of the weights.
- m-sharpness: model in train mode by default (BatchNorm with the statistics of each shard of
  m examples, as in SAM's own step); ``mode="eval"`` measures the eval-mode network instead.

Memory: Lanczos keeps all its vectors, ``iters x dim`` numbers. :func:`~sam.sharpness.lanczos`
defaults to float64 on the CPU (WRN-28-10, 36.5M parameters: 5.8 GB at 20 iterations); here
the vectors (and the Hutchinson / SLQ probes) are float32 on the model's device by default
(2.9 GB at 20 iterations, 7.3 GB at 50), while the small tridiagonal eigenproblem is solved in
float64 on the CPU. ``dtype=float64`` gives the exact-arithmetic reference at twice the memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.data import Normalize
from sam.errors import UserError
from sam.settings import SharpnessSettings
from sam.sharpness.hessian import broadened, hessian_summary, hvp_fn, num_params, slq_nodes
from sam.sharpness.msharpness import m_sharpness
from sam.sharpness.spectrum import spectrum_document, write_spectrum

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TB_TAGS = ("lambda_max", "lambda_ratio", "trace", "m_sharpness")


def vector_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """torch dtype of the Lanczos / Hutchinson vectors from its config name."""
    if name not in DTYPES:
        raise UserError(f"{key}={name}: use float32 (default, half the memory) or float64")
    return DTYPES[name]


def check_settings(
    *, k: int, iters: int, images: int, batch_size: int, trace_samples: int,
    m: Sequence[int | None], rho: float | None, ascent_steps: int = 1,
    slq_runs: int = 0, slq_iters: int = 1, prefix: str = "", m_prefix: str = "",
) -> None:
    """Raise UserError (problem and fix on one line) for settings that cannot be measured;
    the messages name the keys ``prefix`` + key, and ``prefix`` + ``m_prefix`` + key for
    m, rho and ascent_steps."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(prefix + msg)

    need(k >= 5, f"k={k}: must be >= 5 (lambda_max / lambda_5 needs the top 5 eigenvalues)")
    need(iters >= k, f"iters={iters} < k={k}: raise iters (20 or more for converged values)")
    need(images >= 1, f"images={images}: must be >= 1")
    need(batch_size >= 1, f"batch_size={batch_size}: must be >= 1")
    need(trace_samples >= 2, f"trace_samples={trace_samples}: must be >= 2 (standard error)")
    for value in m:
        need(value is None or (isinstance(value, int) and value >= 1),
             f"{m_prefix}m={value}: m-sharpness shard sizes must be positive integers")
    need(rho is None or rho >= 0, f"{m_prefix}rho={rho}: must be >= 0")
    need(ascent_steps >= 1, f"{m_prefix}ascent_steps={ascent_steps}: must be >= 1")
    need(slq_runs >= 0, f"slq.runs={slq_runs}: must be >= 0 (0 = no density)")
    need(slq_runs == 0 or slq_iters >= 2, f"slq.iters={slq_iters}: must be >= 2")


def fixed_subset(
    x_uint8: Tensor, y: Tensor, images: int, seed: int, mean: Sequence[float],
    std: Sequence[float], device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """``min(images, N)`` training images drawn without replacement with a generator seeded
    from ``seed`` (the global RNG is not used), un-augmented, normalized on ``device`` exactly
    as :class:`sam.data.DeviceLoader` normalizes a training batch.

    The generator's seed is ``seed`` hashed with a name of its own: a permutation from
    ``seed`` itself is the one that chooses the noisy labels (``dataset.label_noise``, noise
    seed = run seed), and its first images would all be noisy ones."""
    n = min(images, len(x_uint8))
    stream = hashlib.sha256(repr(("fixed_subset", int(seed))).encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(stream[:8], "little") >> 1)
    idx = torch.randperm(len(x_uint8), generator=generator)[:n]
    x = x_uint8[idx].to(device)
    return Normalize(x.device, mean, std, cutout=False)(x), y[idx].to(device)


@contextmanager
def _mode(model: nn.Module, train: bool) -> Iterator[None]:
    flags = [(mod, mod.training) for mod in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for mod, flag in flags:
            mod.training = flag


def measure(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, k: int, iters: int,
    trace_samples: int, m: Sequence[int], rho: float, ascent_steps: int = 1,
    m_mode: str = "train", seed: int = 0, dtype: torch.dtype = torch.float32,
    slq_runs: int = 0, slq_iters: int = 50, loss_fn=F.cross_entropy,
) -> dict[str, Any]:
    """Hessian summary (eval mode), m-sharpness for each m, and optionally the SLQ density.

    Returns :func:`sam.sharpness.hessian_summary`'s dict plus ``"m_sharpness": {m: value}``
    (each over the first ``len(x) // m * m`` examples) and, when ``slq_runs > 0``,
    ``"density": (grid, density)`` and ``"slq": (nodes, weights)`` (each of shape
    ``(slq_runs, slq_iters)``: :func:`sam.sharpness.hessian.slq_nodes`). Weights, buffers,
    ``.grad`` and modes are left as found; the global RNG is not (train-mode dropout /
    ShakeDrop draw from it): see :func:`untouched`.
    """
    if m_mode not in ("train", "eval"):
        raise UserError(f"m_sharpness.mode={m_mode}: use train or eval")
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    out = hessian_summary(model, loss_fn, batches, k=k, iters=iters,
                          trace_samples=trace_samples, seed=seed, dtype=dtype)
    sharp = {}
    for shard in m:
        n = len(x) // shard * shard
        if n == 0:
            raise UserError(f"m={shard} exceeds the {len(x)} measured images: raise images "
                            "or lower m")
        with _mode(model, m_mode == "train"):
            sharp[shard] = m_sharpness(model, loss_fn, x[:n], y[:n], shard, rho, ascent_steps)
    out["m_sharpness"] = sharp
    if slq_runs > 0:
        device = next(p.device for p in model.parameters() if p.requires_grad)
        with _mode(model, False):
            hvp = hvp_fn(model, loss_fn, batches)
            theta, tau = slq_nodes(hvp, num_params(model), slq_iters, slq_runs, seed=seed,
                                   dtype=dtype, device=device)
        out["slq"] = (theta, tau)
        out["density"] = broadened(theta, tau)
    return out


@contextmanager
def untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a measurement without leaving a trace on training: the CPU RNG (and the CUDA RNG
    of ``device``) is forked, every module's mode, every buffer and every ``.grad`` are saved
    and put back. (The weights are restored by :func:`sam.sharpness.m_sharpness` itself.)"""
    modes = [(mod, mod.training) for mod in model.modules()]
    buffers = [b.detach().clone() for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers, strict=True):
                    b.copy_(saved)
            for p, g in grads:
                p.grad = g
            for mod, flag in modes:
                mod.training = flag


def measured_epoch(s: SharpnessSettings, epoch: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``epochs`` is measured: a multiple of
    ``s.every`` > 0 or the last epoch then, or one of ``s.epochs``."""
    return bool(s.every and (epoch % s.every == 0 or epoch == epochs)) or epoch in s.epochs


def epoch_sharpness(s: SharpnessSettings, model: nn.Module, splits: Any, epoch: int,
                    writer: Any = None, *, epochs: int, seed: int, batch_size: int, m: int,
                    rho: float, run_dir: str | Path | None = None) -> dict[str, float]:
    """The trainer's hook after epoch ``epoch`` (1-based) of ``epochs``: ``{}`` unless the
    epoch is measured (:func:`measured_epoch`: ``sharpness.every``, ``sharpness.epochs``);
    then lambda_max, lambda_max / lambda_5, the Hutchinson trace (and its standard error) and
    m-sharpness on ``sharpness.images`` fixed training images (drawn from ``seed``), logged
    to TensorBoard as ``sharpness/<name>`` and returned as ``{"sharpness_<name>": value}``
    for the history. ``batch_size``, ``m``, ``rho``: the run's, used where ``s`` leaves its
    own null. With ``sharpness.slq_runs > 0`` the SLQ spectral density too, written with the
    eigenvalues to ``<run_dir>/spectrum/epoch_<epoch>.json`` (:mod:`sam.sharpness.spectrum`;
    nothing is written when ``run_dir`` is None: DDP ranks > 0).

    ``splits`` is the :class:`sam.data.Splits` the run trains on. The measurement leaves the
    training trajectory bit-identical: see :func:`untouched`. Every DDP rank computes it (same
    weights and data, same values), so no rank waits on another.
    """
    if not measured_epoch(s, epoch, epochs):
        return {}
    device = next(model.parameters()).device
    m = s.m or m  # under DDP the run's m is the per-rank batch
    rho = s.rho if s.rho is not None else rho
    t0 = time.perf_counter()
    with untouched(model, device):
        x, y = fixed_subset(splits.train_x, splits.train_y, s.images, seed, splits.mean,
                            splits.std, device)
        r = measure(model, x, y, batch_size=s.batch_size or batch_size, k=s.k,
                    iters=s.iters, trace_samples=s.trace_samples, m=[min(m, len(x))],
                    rho=rho, seed=seed, dtype=vector_dtype(s.dtype), slq_runs=s.slq_runs,
                    slq_iters=s.slq_iters)
    values = {"lambda_max": r["lambda_max"], "lambda_ratio": r["lambda_ratio"],
              "trace": r["trace"], "m_sharpness": next(iter(r["m_sharpness"].values()))}
    out = {f"sharpness_{key}": float(v) for key, v in values.items()}
    out["sharpness_trace_stderr"] = float(r["trace_stderr"])
    out["sharpness_time_s"] = time.perf_counter() - t0
    if "slq" in r and run_dir is not None:
        settings = {"k": s.k, "iters": s.iters, "trace_samples": s.trace_samples,
                    "dtype": s.dtype, "slq_runs": s.slq_runs, "slq_iters": s.slq_iters}
        write_spectrum(run_dir, spectrum_document(epoch, r, *r["slq"], images=len(x),
                                                  seed=seed, settings=settings))
    if writer is not None:
        for key in TB_TAGS:
            if math.isfinite(values[key]):
                writer.add_scalar(f"sharpness/{key}", values[key], epoch)
        writer.flush()
    log.info("epoch %d sharpness: lambda_max %.4g  lambda_max/lambda_5 %.3g  trace %.4g  "
             "m-sharpness(m=%d, rho=%g) %.4g  (%.1f s)", epoch, values["lambda_max"],
             values["lambda_ratio"], values["trace"], min(m, len(x)), rho,
             values["m_sharpness"], out["sharpness_time_s"])
    return out
