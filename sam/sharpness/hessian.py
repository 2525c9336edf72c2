"""Hessian spectrum of the training loss (SAM paper, Foret et al., ICLR 2021, section 4.2).

Top eigenvalues by Lanczos with full re-orthogonalisation (:func:`lanczos`), the trace by
Hutchinson's estimator (:func:`hutchinson_trace`), the spectral density by stochastic Lanczos
quadrature (:func:`slq_density`, Ghorbani et al. 2019; broadened and plotted by
:mod:`sam.sharpness.density`) and the summary the trainer logs (:func:`hessian_summary`).

Every routine only talks to the loss through a Hessian-vector product ``hvp(v) = H v`` on the
flattened trainable parameters, built by :func:`hvp_fn` from a fixed list of batches.
``loss_fn(model(x), y)`` must return the *mean* loss of the batch (the default reduction of
``torch.nn.functional.cross_entropy`` / ``mse_loss``). Only :mod:`sam.errors` is imported from
the project outside :mod:`sam.sharpness`.
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sam.errors import UserError
from sam.sharpness._common import Batch, Hvp, LossFn, check_positive, trainable_params
from sam.sharpness.density import default_sigma, gaussian_mixture

# --------------------------------------------------------------------------- helpers


def _flatten(tensors: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    """Concatenate ``tensors`` into one vector, with zeros where an entry is None."""
    parts = [
        (t if t is not None else torch.zeros_like(p)).reshape(-1)
        for t, p in zip(tensors, like, strict=True)
    ]
    return torch.cat(parts)


def _unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for p in like:
        out.append(vec[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _randn(dim: int, gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
    return torch.randn(dim, generator=gen, dtype=dtype).to(device)


def _rademacher(dim: int, gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
    return (torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


# --------------------------------------------------------------------------- Hessian-vector product


def hvp_fn(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]) -> Hvp:
    """Hessian-vector product of the mean training loss over a fixed list of batches.

    ``L(w) = sum_b (n_b / N) L_b(w)`` with ``L_b = loss_fn(model(x_b), y_b)`` the batch-mean loss,
    ``n_b = len(x_b)`` and ``N = sum_b n_b``, so ``L`` is the mean loss over all N examples even
    when the batches differ in size. The returned function maps a vector ``v`` of length
    ``dim = sum of numel over the trainable parameters`` (in ``model.parameters()`` order) to

        ``H v = sum_b (n_b / N) grad_w (grad_w L_b(w) . v)``

    by double backward, one batch at a time, so memory stays that of one batch. ``v`` is cast
    to the parameters' dtype and device; the result has the parameters' dtype and device.
    Parameter ``.grad`` fields are not touched.

    The model's mode is the caller's business: put it in eval mode first so that BatchNorm uses
    (and does not update) its running statistics and dropout is off; otherwise each product
    sees different batch statistics / masks and is not a fixed linear map.
    """
    if len(batches) == 0:
        raise UserError("hvp_fn got no batches: pass a non-empty list of (x, y) pairs")
    params = trainable_params(model)
    total = sum(len(x) for x, _ in batches)

    def hvp(v: Tensor) -> Tensor:
        v = v.to(dtype=params[0].dtype, device=params[0].device)
        vs = _unflatten(v, params)
        out = torch.zeros_like(v)
        for x, y in batches:
            with sdpa_kernel(SDPBackend.MATH):  # fused attention has no double backward (ViTs)
                loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = sum(
                ((g * u).sum() for g, u in zip(grads, vs, strict=True) if g is not None),
                start=loss.new_zeros(()),
            )
            if not dot.requires_grad:  # the loss is at most linear in the parameters
                continue
            hv = torch.autograd.grad(dot, params, allow_unused=True)
            out.add_(_flatten(hv, params), alpha=len(x) / total)
        return out

    return hvp


def num_params(model: nn.Module) -> int:
    """Length ``dim`` of the flattened trainable-parameter vector that :func:`hvp_fn` acts on."""
    return sum(p.numel() for p in trainable_params(model))


# --------------------------------------------------------------------------- Lanczos


def lanczos_tridiag(
    hvp: Hvp,
    dim: int,
    iters: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    v0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lanczos tridiagonalisation of the symmetric operator ``hvp`` with full re-orthogonalisation.

    From ``q_1 = v0 / ||v0||`` (``v0 ~ N(0, I)`` drawn from ``seed`` when not given) it builds an
    orthonormal basis ``Q = [q_1 .. q_m]`` of the Krylov space, ``m = min(iters, dim)``, with

        ``alpha_j = q_j^T H q_j``,
        ``beta_j q_{j+1} = (I - Q_j Q_j^T) H q_j``  (Gram-Schmidt against *all* q, twice),

    so that ``Q^T H Q = T = tridiag(beta, alpha, beta)``. If ``beta_j`` vanishes (the Krylov space
    is invariant), the run continues from a fresh random vector orthogonal to Q with
    ``beta_j = 0``, so ``iters = dim`` recovers every eigenvalue with its multiplicity.

    Returns ``(alphas, betas)``: float64 CPU tensors of length m and m - 1. The m Lanczos vectors
    are kept in ``dtype`` on ``device`` (CPU when None): memory ``m * dim`` numbers, e.g.
    5.8 GB for WRN-28-10 (36.5M parameters) at m = 20 in float64. For large models pass
    ``dtype=torch.float32`` and the model's device (half the memory, no host transfers; the
    trainer and ``sam-sharpness`` do, see :mod:`sam.sharpness.measurement`); T is always float64.
    """
    check_positive("iters", iters)
    check_positive("dim", dim)
    m = min(iters, dim)
    device = torch.device("cpu") if device is None else torch.device(device)
    gen = _generator(seed)
    q = _randn(dim, gen, dtype, device) if v0 is None else v0.to(dtype=dtype, device=device)
    basis = torch.zeros(m, dim, dtype=dtype, device=device)
    basis[0] = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0  # running estimate of ||H||, for the breakdown test
    # breakdown threshold: rounding level of m re-orthogonalised vectors; sqrt(dim) would be
    # 7e-3 * ||H|| in float32 for 36.5M parameters and cut off a genuinely small residual
    # (normalising a noise-level residual is harmless: it is orthogonal to Q like a restart)
    tol = 10.0 * math.sqrt(m) * torch.finfo(dtype).eps
    for j in range(m):
        w = hvp(basis[j]).to(dtype=dtype, device=device)
        alpha = float(basis[j] @ w)
        alphas.append(alpha)
        w = _orthogonalise(w, basis[: j + 1])
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if j == m - 1:
            break
        if beta <= tol * scale:  # invariant subspace found: restart orthogonally
            beta = 0.0
            w = _orthogonalise(_randn(dim, gen, dtype, device), basis[: j + 1])
        betas.append(beta)
        basis[j + 1] = w / w.norm()
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64)


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """``w - Q Q^T w``, done twice (classical Gram-Schmidt with re-orthogonalisation)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def tridiag_matrix(alphas: Tensor, betas: Tensor) -> Tensor:
    """The symmetric tridiagonal ``T`` with diagonal ``alphas`` and off-diagonals ``betas``."""
    return torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)


def lanczos(
    hvp: Hvp,
    dim: int,
    k: int,
    iters: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> Tensor:
    """Top-k (largest algebraic) Hessian eigenvalues, in descending order, by Lanczos.

    ``lambda_1 >= ... >= lambda_k`` are approximated by the k largest Ritz values, the
    eigenvalues of ``T = Q^T H Q`` from :func:`lanczos_tridiag` (``torch.linalg.eigvalsh``).
    Ritz values are lower bounds that converge from below, fastest for well separated extreme
    eigenvalues; with ``iters >= dim`` they are the exact eigenvalues. Returns a float64 tensor.
    """
    check_positive("k", k)
    if k > min(iters, dim):
        raise UserError(f"lanczos: k={k} exceeds min(iters, dim)={min(iters, dim)}: raise iters")
    alphas, betas = lanczos_tridiag(hvp, dim, iters, seed=seed, dtype=dtype, device=device)
    ritz = torch.linalg.eigvalsh(tridiag_matrix(alphas, betas))
    return ritz.flip(0)[:k]


# --------------------------------------------------------------------------- trace


def hutchinson_trace(
    hvp: Hvp,
    dim: int,
    samples: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr(H)`` with Rademacher probes, and its standard error.

    ``tr(H) = E[z^T H z]`` for ``z`` with i.i.d. +-1 entries; returns the sample mean of
    ``z_s^T H z_s`` over ``samples`` probes and its standard error ``std / sqrt(samples)``
    (sample std with Bessel's correction). The estimator's variance is
    ``2 sum_{i != j} H_ij^2``.
    """
    if samples < 2:
        raise UserError(f"hutchinson_trace needs samples >= 2 for a standard error, got {samples}")
    device = torch.device("cpu") if device is None else torch.device(device)
    gen = _generator(seed)
    values = torch.empty(samples, dtype=torch.float64)
    for s in range(samples):
        z = _rademacher(dim, gen, dtype, device)
        values[s] = float(z @ hvp(z).to(dtype=dtype, device=device))
    return float(values.mean()), float(values.std() / math.sqrt(samples))


# --------------------------------------------------------------------------- spectral density


def slq_nodes(
    hvp: Hvp,
    dim: int,
    iters: int,
    runs: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature nodes and weights (Ghorbani et al. 2019).

    Each run r starts Lanczos from a fresh ``v_r ~ N(0, I)``; with ``T_r = U diag(theta) U^T``
    (``m = min(iters, dim)`` steps) the Gauss quadrature nodes are the Ritz values
    ``theta_i^(r)`` and the weights ``tau_i^(r) = U_{1i}^2`` (each run's sum to 1), so that

        ``sum_i tau_i^(r) f(theta_i^(r)) = v_r^T f(H) v_r / ||v_r||^2``

    exactly for polynomials f of degree up to 2m - 1; averaged over the runs it estimates
    ``(1 / dim) tr f(H) = (1 / dim) sum_k f(lambda_k)``. Returns float64 CPU tensors
    ``(theta, tau)`` of shape ``(runs, m)``, each row's theta ascending.
    """
    check_positive("runs", runs)
    gen = _generator(seed)
    nodes, weights = [], []
    for run in range(runs):
        v0 = torch.randn(dim, generator=gen, dtype=dtype)
        alphas, betas = lanczos_tridiag(
            hvp, dim, iters, seed=seed + run + 1, dtype=dtype, device=device, v0=v0
        )
        theta, vecs = torch.linalg.eigh(tridiag_matrix(alphas, betas))
        nodes.append(theta)
        weights.append(vecs[0] ** 2)
    return torch.stack(nodes), torch.stack(weights)


def broadened(
    theta: Tensor, tau: Tensor, grid: Tensor | int = 1000, sigma: float | None = None
) -> tuple[Tensor, Tensor]:
    """The SLQ density of nodes ``theta`` and weights ``tau`` (shape ``(runs, m)``, as from
    :func:`slq_nodes`), Gaussian-broadened and averaged over the runs:

        ``phi(t) = (1 / runs) sum_r sum_i tau_i^(r) N(t; theta_i^(r), sigma^2)``,

    which integrates to 1. ``grid``: the points t (a 1-D tensor), or their number, spread over
    ``[min theta - 5 sigma, max theta + 5 sigma]``; ``sigma`` defaults to 1% of the node range.
    Returns float64 CPU tensors ``(grid, density)``.
    """
    runs = theta.shape[0]
    theta, tau = theta.reshape(-1).double().cpu(), tau.reshape(-1).double().cpu() / runs
    sigma = default_sigma(theta) if sigma is None else sigma
    if sigma <= 0:
        raise UserError(f"slq_density: sigma must be > 0, got {sigma}: pass a positive width")
    if isinstance(grid, int):
        lo, hi = float(theta.min()) - 5 * sigma, float(theta.max()) + 5 * sigma
        grid = torch.linspace(lo, hi, grid, dtype=torch.float64)
    grid = grid.to(dtype=torch.float64, device="cpu")
    return grid, gaussian_mixture(grid, theta, tau, sigma)


def slq_density(
    hvp: Hvp,
    dim: int,
    iters: int,
    runs: int,
    seed: int = 0,
    grid: Tensor | int = 1000,
    sigma: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> tuple[Tensor, Tensor]:
    """Hessian spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019):
    :func:`broadened` of :func:`slq_nodes`.

    ``phi(t)`` estimates ``(1 / dim) sum_k N(t; lambda_k, sigma^2)``; it integrates to 1 and
    its first moment is ``mean_r v_r^T H v_r / ||v_r||^2`` (unbiased for ``tr(H) / dim``).
    ``grid`` and ``sigma`` as in :func:`broadened`. Returns float64 CPU tensors
    ``(grid, density)``.
    """
    theta, tau = slq_nodes(hvp, dim, iters, runs, seed=seed, dtype=dtype, device=device)
    return broadened(theta, tau, grid, sigma)


# --------------------------------------------------------------------------- summary


def hessian_summary(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    k: int = 5,
    iters: int = 20,
    trace_samples: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Any]:
    """Hessian statistics of the mean training loss over ``batches`` (paper section 4.2).

    Returns ``{"lambda_max": lambda_1, "lambda_ratio": lambda_1 / lambda_5, "top_k": [lambda_1
    .. lambda_k], "trace": Hutchinson estimate of tr(H), "trace_stderr": its standard error,
    "dim": number of parameters, "iters": iters, "trace_samples": trace_samples}``, eigenvalues
    by :func:`lanczos` (``iters`` steps) and the trace by :func:`hutchinson_trace`.
    ``lambda_ratio`` is NaN when ``k < 5`` or ``lambda_5 == 0``.

    The model is put in eval mode for the measurement (BatchNorm uses its running statistics,
    dropout is off) and every submodule's mode is restored afterwards.
    """
    with _eval_mode(model):
        hvp = hvp_fn(model, loss_fn, batches)
        dim = num_params(model)
        device = next(p.device for p in trainable_params(model))
        top = lanczos(hvp, dim, k, iters, seed=seed, dtype=dtype, device=device).tolist()
        trace, stderr = hutchinson_trace(hvp, dim, trace_samples, seed, dtype, device)
    ratio = top[0] / top[4] if len(top) >= 5 and top[4] != 0 else float("nan")
    return {
        "lambda_max": top[0],
        "lambda_ratio": ratio,
        "top_k": top,
        "trace": trace,
        "trace_stderr": stderr,
        "dim": dim,
        "iters": iters,
        "trace_samples": trace_samples,
    }
