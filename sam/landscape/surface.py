"""Loss and error of a network at points of weight space, on fixed data batches.

- :func:`line`: ``L(w + a d)`` for each ``a`` (one direction, Li et al. 2018's 1-D plot);
- :func:`plane`: ``L(w + a d1 + b d2)`` on the grid ``a x b`` (their 2-D contour);
- :func:`interpolation`: ``L((1 - t) w_1 + t w_2)`` between two networks of one architecture
  (Goodfellow et al. 2015's straight line, e.g. from the SGD to the SAM solution).

``L`` is the mean of ``loss_fn`` over all the images of ``batches`` (each batch weighted by its
size) and the error the fraction of images whose arg-max output is not the label (None when
the outputs are not ``(N, classes)`` logits). The network is evaluated in eval mode, so
BatchNorm uses its running statistics and is one fixed function of the weights; the data
stays on the device, one batch per forward pass, one grid point after another, with a tqdm
progress bar on stderr. Weights, buffers and modes are put back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from sam.landscape.directions import Direction, trainable

LossFn = Callable[[Tensor, Tensor], Tensor]
Batches = Sequence[tuple[Tensor, Tensor]]
Values = tuple[list[float], list[float | None]]  # (losses, errors), one per point


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches,
             loss_fn: LossFn = F.cross_entropy) -> tuple[float, float | None]:
    """``(sum_b |b| loss_fn(model(x_b), y_b) / N, error)`` over the batches, as the model is
    now (its mode included). The sums stay on the device until the end: one sync."""
    loss = wrong = None
    n = 0
    for x, y in batches:
        out = model(x)
        term = loss_fn(out, y).detach().to(torch.float64) * len(y)
        loss = term if loss is None else loss + term
        if out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
            miss = (out.argmax(1) != y).sum()
            wrong = miss if wrong is None else wrong + miss
        n += len(y)
    if loss is None:
        raise ValueError("no batches to evaluate")
    return loss.item() / n, (None if wrong is None else wrong.item() / n)


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; weights, buffers and every module's mode as found afterwards."""
    modes = [(mod, mod.training) for mod in model.modules()]
    saved = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    model.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip((*model.parameters(), *model.buffers()), saved, strict=True):
                t.copy_(s)
        for mod, flag in modes:
            mod.training = flag


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="pt", disable=not enabled, leave=False,
                dynamic_ncols=True)


def _sweep(model: nn.Module, points: Sequence[Sequence[float]], directions: list[Direction],
           batches: Batches, loss_fn: LossFn, progress: bool, desc: str) -> Values:
    """``L(w + sum_k c_k d_k)`` for each point ``(c_1, ..., c_K)``."""
    params = [p for _, p in trainable(model)]
    for d in directions:
        if len(d) != len(params) or any(t.shape != p.shape for t, p in zip(d, params,
                                                                            strict=True)):
            raise ValueError("a direction does not match the model's trainable parameters")
    origin = [p.detach().clone() for p in params]
    losses: list[float] = []
    errors: list[float | None] = []
    with _restored(model), _progress(len(points), desc, progress) as bar:
        for coeffs in points:
            with torch.no_grad():
                for i, (p, w) in enumerate(zip(params, origin, strict=True)):
                    p.copy_(w)
                    for c, d in zip(coeffs, directions, strict=True):
                        if c != 0:
                            p.add_(d[i], alpha=c)
            loss, error = evaluate(model, batches, loss_fn)
            losses.append(loss)
            errors.append(error)
            bar.update()
    return losses, errors


def line(model: nn.Module, direction: Direction, alphas: Sequence[float], batches: Batches,
         loss_fn: LossFn = F.cross_entropy, progress: bool = False) -> Values:
    """``(L(w + a d), error(w + a d))`` for each ``a`` of ``alphas``."""
    return _sweep(model, [(a,) for a in alphas], [direction], batches, loss_fn, progress,
                  "line")


def plane(model: nn.Module, d1: Direction, d2: Direction, alphas: Sequence[float],
          betas: Sequence[float], batches: Batches, loss_fn: LossFn = F.cross_entropy,
          progress: bool = False) -> tuple[list[list[float]], list[list[float | None]]]:
    """``loss[i][j] = L(w + alphas[i] d1 + betas[j] d2)`` (and the error likewise)."""
    points = [(a, b) for a in alphas for b in betas]
    losses, errors = _sweep(model, points, [d1, d2], batches, loss_fn, progress, "plane")
    k = len(betas)
    return ([losses[i * k:(i + 1) * k] for i in range(len(alphas))],
            [errors[i * k:(i + 1) * k] for i in range(len(alphas))])


def same_architecture(a: nn.Module, b: nn.Module) -> str | None:
    """None when the two networks have the same parameters and buffers (names, shapes,
    dtypes); else the first difference, in words."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        only = sorted(sa.keys() ^ sb.keys())[0]
        return f"{only} is in one network only ({len(sa)} vs {len(sb)} tensors)"
    for key in sa:
        if sa[key].shape != sb[key].shape:
            return f"{key} has shape {tuple(sa[key].shape)} vs {tuple(sb[key].shape)}"
    return None


def interpolation(model: nn.Module, other: nn.Module, ts: Sequence[float], batches: Batches,
                  loss_fn: LossFn = F.cross_entropy, progress: bool = False) -> Values:
    """``L((1 - t) w + t w')`` for each ``t``, ``w`` the weights of ``model`` and ``w'`` those
    of ``other`` (same architecture). Floating-point buffers (BatchNorm's running mean and
    variance) move along the same line, so ``t = 0`` is ``model`` and ``t = 1`` is ``other``
    exactly; outside [0, 1] a running variance is clamped at 0. Integer buffers keep
    ``model``'s."""
    difference = same_architecture(model, other)
    if difference is not None:
        raise ValueError(f"the two networks differ: {difference}")
    pairs = [(t, s.detach().to(t.device, t.dtype)) for t, s in zip(
        model.state_dict(keep_vars=True).values(), other.state_dict().values(), strict=True)
        if t.is_floating_point()]
    start = [t.detach().clone() for t, _ in pairs]
    names = [k for k, t in model.state_dict(keep_vars=True).items() if t.is_floating_point()]
    losses: list[float] = []
    errors: list[float | None] = []
    with _restored(model), _progress(len(ts), "interpolation", progress) as bar:
        for t in ts:
            with torch.no_grad():
                for name, (dst, end), s in zip(names, pairs, start, strict=True):
                    torch.lerp(s, end, float(t), out=dst.data)
                    if name.endswith("running_var"):
                        dst.data.clamp_(min=0)
            loss, error = evaluate(model, batches, loss_fn)
            losses.append(loss)
            errors.append(error)
            bar.update()
    return losses, errors
