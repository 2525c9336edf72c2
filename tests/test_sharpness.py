"""sam.sharpness against exact, independent references (CPU, float64).

Hessian routines: a ~50-parameter MLP with smooth activations whose dense Hessian comes from
``torch.autograd.functional.hessian`` of the loss as a function of the flat parameter vector
(via ``torch.func.functional_call``). m-sharpness: per-example quadratic losses with a known
matrix A, where one normalised-gradient step and the exact ball maximum have closed forms.
"""

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from torch import Tensor, nn
from torch.func import functional_call

from sam.errors import UserError
from sam.sharpness import (
    hessian_summary,
    hutchinson_trace,
    hvp_fn,
    lanczos,
    lanczos_tridiag,
    m_sharpness,
    num_params,
    plot_density,
    slq_density,
    tridiag_matrix,
)

DT = torch.float64
N_EXAMPLES = 40


# --------------------------------------------------------------------------- tiny MLP problems


class Problem:
    """A tiny float64 MLP, its data, its loss and its exact dense Hessian on all the data."""

    def __init__(self, loss: str, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.x = torch.randn(N_EXAMPLES, 4, dtype=DT)
        if loss == "ce":  # 4-6-3 tanh MLP with cross-entropy: 51 parameters
            self.model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
            self.y = torch.randint(0, 3, (N_EXAMPLES,))
            self.loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
        else:  # 4-7-2 softplus MLP with MSE: 51 parameters
            self.model = nn.Sequential(nn.Linear(4, 7), nn.Softplus(), nn.Linear(7, 2)).to(DT)
            self.y = torch.randn(N_EXAMPLES, 2, dtype=DT)
            self.loss_fn = F.mse_loss
        self.dim = num_params(self.model)
        self.hessian = self._dense_hessian()
        self.eigs = torch.linalg.eigvalsh(self.hessian).flip(0)  # descending

    def _dense_hessian(self) -> Tensor:
        named = list(self.model.named_parameters())
        theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])

        def loss_of(theta: Tensor) -> Tensor:
            params, start = {}, 0
            for name, p in named:
                params[name] = theta[start : start + p.numel()].view_as(p)
                start += p.numel()
            return self.loss_fn(functional_call(self.model, params, (self.x,)), self.y)

        return torch.autograd.functional.hessian(loss_of, theta0)

    def batches(self, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
        assert sum(sizes) == N_EXAMPLES
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        return [(self.x[a:b], self.y[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


UNEQUAL = [7, 13, 20]


@pytest.fixture(scope="module", params=["ce", "mse"])
def problem(request: pytest.FixtureRequest) -> Problem:
    return Problem(request.param)


@pytest.fixture(scope="module")
def ce_problem() -> Problem:
    return Problem("ce")


# --------------------------------------------------------------------------- hvp_fn


def test_problem_is_tiny_with_a_positive_top5(problem: Problem) -> None:
    assert 40 <= problem.dim <= 60
    assert problem.eigs[4] > 0


@pytest.mark.parametrize("sizes", [[N_EXAMPLES], UNEQUAL, [1, 39]])
def test_hvp_equals_dense_hessian_times_v(problem: Problem, sizes: list[int]) -> None:
    hvp = hvp_fn(problem.model, problem.loss_fn, problem.batches(sizes))
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(problem.dim, generator=gen, dtype=DT)
        torch.testing.assert_close(hvp(v), problem.hessian @ v, rtol=0, atol=1e-10)


def test_hvp_is_the_full_hessian_column_by_column(ce_problem: Problem) -> None:
    hvp = hvp_fn(ce_problem.model, ce_problem.loss_fn, ce_problem.batches(UNEQUAL))
    dense = torch.stack([hvp(e) for e in torch.eye(ce_problem.dim, dtype=DT)], dim=1)
    torch.testing.assert_close(dense, ce_problem.hessian, rtol=0, atol=1e-10)


def test_hvp_leaves_grads_and_weights_alone(ce_problem: Problem) -> None:
    model = ce_problem.model
    before = [p.detach().clone() for p in model.parameters()]
    hvp_fn(model, ce_problem.loss_fn, ce_problem.batches(UNEQUAL))(torch.ones(ce_problem.dim))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_hvp_fn_rejects_no_batches(ce_problem: Problem) -> None:
    with pytest.raises(UserError):
        hvp_fn(ce_problem.model, ce_problem.loss_fn, [])


# --------------------------------------------------------------------------- Lanczos


@pytest.mark.parametrize("iters", [35, 1000])  # 1000 is capped at dim: the Krylov space is full
def test_lanczos_top5_matches_dense_eigenvalues(problem: Problem, iters: int) -> None:
    hvp = hvp_fn(problem.model, problem.loss_fn, problem.batches(UNEQUAL))
    top = lanczos(hvp, problem.dim, k=5, iters=iters, seed=0)
    assert top.shape == (5,)
    assert torch.all(top[:-1] >= top[1:])
    torch.testing.assert_close(top, problem.eigs[:5], rtol=1e-6, atol=0)


def test_lanczos_basis_is_orthonormal_and_tridiagonalises() -> None:
    """T from the recurrence equals Q^T H Q: check its spectrum against a dense matrix."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(30, 30, generator=gen, dtype=DT)
    h = a + a.T
    alphas, betas = lanczos_tridiag(lambda v: h @ v, 30, 30, seed=5)
    assert alphas.shape == (30,) and betas.shape == (29,)
    ritz = torch.linalg.eigvalsh(tridiag_matrix(alphas, betas))
    torch.testing.assert_close(ritz, torch.linalg.eigvalsh(h), rtol=0, atol=1e-10)


def test_lanczos_recovers_repeated_eigenvalues() -> None:
    """The Krylov space of a matrix with 3 distinct eigenvalues is 3-dimensional; the restart
    after breakdown must still find every copy of the top eigenvalue."""
    diag = torch.tensor([5.0] * 4 + [2.0] * 3 + [-1.0] * 5, dtype=DT)
    top = lanczos(lambda v: diag * v, 12, k=6, iters=12, seed=0)
    torch.testing.assert_close(top, diag[:6], rtol=0, atol=1e-12)


def test_lanczos_rejects_k_above_iters() -> None:
    with pytest.raises(UserError):
        lanczos(lambda v: v, 10, k=5, iters=4)


# --------------------------------------------------------------------------- Hutchinson


def test_hutchinson_trace_within_3_stderr_and_10_percent(problem: Problem) -> None:
    hvp = hvp_fn(problem.model, problem.loss_fn, problem.batches(UNEQUAL))
    samples = 1000
    mean, stderr = hutchinson_trace(hvp, problem.dim, samples=samples, seed=0)
    exact = float(problem.hessian.trace())
    assert abs(mean - exact) <= 3 * stderr
    assert abs(mean - exact) <= 0.1 * abs(exact)
    # Rademacher probes: Var(z^T H z) = 2 sum_{i != j} H_ij^2
    off = problem.hessian - torch.diag(problem.hessian.diag())
    expected_se = math.sqrt(2 * float((off**2).sum()) / samples)
    assert 0.8 * expected_se <= stderr <= 1.2 * expected_se


def test_hutchinson_is_exact_for_a_diagonal_operator() -> None:
    diag = torch.linspace(-1, 3, 17, dtype=DT)
    mean, stderr = hutchinson_trace(lambda v: diag * v, 17, samples=5, seed=0)
    assert mean == pytest.approx(float(diag.sum()), abs=1e-12)
    assert stderr == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- SLQ


def _moment(grid: Tensor, density: Tensor, k: int) -> float:
    return float(torch.trapezoid(density * grid**k, grid))


def test_slq_full_krylov_puts_the_mass_on_the_exact_eigenvalues(ce_problem: Problem) -> None:
    hvp = hvp_fn(ce_problem.model, ce_problem.loss_fn, ce_problem.batches(UNEQUAL))
    eigs = ce_problem.eigs
    sigma = 0.005
    grid, density = slq_density(
        hvp, ce_problem.dim, iters=ce_problem.dim, runs=10, seed=0, grid=4000, sigma=sigma
    )
    assert grid.shape == density.shape == (4000,)
    assert torch.all(density >= 0)
    assert _moment(grid, density, 0) == pytest.approx(1.0, abs=1e-6)
    near = (grid[:, None] - eigs[None, :]).abs().min(dim=1).values <= 5 * sigma
    assert float(torch.trapezoid(density * near, grid)) >= 0.999
    assert float(grid.min()) <= float(eigs.min()) and float(grid.max()) >= float(eigs.max())


def test_slq_moments_match_the_exact_spectrum(problem: Problem) -> None:
    """Gauss quadrature with m >= 2 nodes is exact for t and t^2, so per run the moments are
    u^T H u and u^T H^2 u (u uniform on the sphere): unbiased, with variance 2 var(f(lambda)) /
    (dim + 2). Tolerance: 4 standard errors over the runs."""
    hvp = hvp_fn(problem.model, problem.loss_fn, problem.batches(UNEQUAL))
    runs, sigma, eigs, dim = 40, 0.01, problem.eigs, problem.dim
    grid, density = slq_density(hvp, dim, iters=12, runs=runs, seed=1, sigma=sigma)
    assert _moment(grid, density, 0) == pytest.approx(1.0, abs=1e-6)
    for k, shift in ((1, 0.0), (2, sigma**2)):
        values = eigs**k
        se = math.sqrt(2 * float(values.var(correction=0)) / (dim + 2) / runs)
        assert abs(_moment(grid, density, k) - shift - float(values.mean())) <= 4 * se


def test_slq_accepts_an_explicit_grid() -> None:
    diag = torch.tensor([0.0, 1.0, 1.0, 3.0], dtype=DT)
    grid = torch.linspace(-1, 4, 501, dtype=DT)
    out_grid, density = slq_density(lambda v: diag * v, 4, iters=4, runs=3, grid=grid, sigma=0.1)
    assert torch.equal(out_grid, grid)
    assert _moment(grid, density, 0) == pytest.approx(1.0, abs=1e-6)


def test_plot_density_writes_a_png(tmp_path) -> None:
    grid = torch.linspace(-1, 1, 200, dtype=DT)
    density = torch.exp(-(grid**2) / 0.02)
    density[:10] = 0.0  # zeros must not break the log scale
    path = plot_density(grid, density, tmp_path / "sub" / "density.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- hessian_summary


def test_hessian_summary_matches_dense_and_restores_modes(ce_problem: Problem) -> None:
    model = ce_problem.model
    model.train()
    model[1].eval()  # a submodule with its own mode must keep it
    dim = ce_problem.dim
    out = hessian_summary(
        model,
        ce_problem.loss_fn,
        ce_problem.batches(UNEQUAL),
        k=5,
        iters=dim,
        trace_samples=1000,
        seed=0,
    )
    eigs = ce_problem.eigs
    assert out["lambda_max"] == pytest.approx(float(eigs[0]), rel=1e-6)
    assert out["lambda_ratio"] == pytest.approx(float(eigs[0] / eigs[4]), rel=1e-6)
    torch.testing.assert_close(torch.tensor(out["top_k"], dtype=DT), eigs[:5], rtol=1e-6, atol=0)
    exact_trace = float(ce_problem.hessian.trace())
    assert abs(out["trace"] - exact_trace) <= 3 * out["trace_stderr"]
    assert out["dim"] == dim
    assert model.training and model[0].training and not model[1].training
    model.eval()


# --------------------------------------------------------------------------- m-sharpness


class Quadratic(nn.Module):
    """Per-example loss 0.5 (w - c_i)^T A (w - c_i); the input batch is the centres c_i."""

    def __init__(self, a: Tensor, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(w.clone())

    def forward(self, c: Tensor) -> Tensor:
        r = self.w - c
        return 0.5 * ((r @ self.a) * r).sum(dim=1)


def mean_loss(per_example: Tensor, _y: Tensor) -> Tensor:
    return per_example.mean()


D, N, RHO = 5, 12, 0.3


def _quadratic_setup(isotropic: bool = False) -> tuple[Quadratic, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(7)
    if isotropic:
        a = 2.0 * torch.eye(D, dtype=DT)
    else:
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=DT))
        a = q @ torch.diag(torch.tensor([3.0, 1.5, 1.0, 0.5, 0.2], dtype=DT)) @ q.T
    w = torch.randn(D, generator=gen, dtype=DT)
    c = torch.randn(N, D, generator=gen, dtype=DT)
    return Quadratic(a, w), a, w, c


def _shard_grads(a: Tensor, w: Tensor, c: Tensor, m: int) -> list[Tensor]:
    """Gradient of the shard-mean loss: A (w - mean of the shard's centres)."""
    return [a @ (w - shard.mean(dim=0)) for shard in c.split(m)]


@pytest.mark.parametrize("m", [1, 4, N])
def test_m_sharpness_one_step_matches_closed_form(m: int) -> None:
    model, a, w, c = _quadratic_setup()
    got = m_sharpness(model, mean_loss, c, torch.zeros(N), m=m, rho=RHO)
    per_shard = [
        RHO * g.norm() + 0.5 * RHO**2 * (g @ a @ g) / (g @ g) for g in _shard_grads(a, w, c, m)
    ]
    assert got == pytest.approx(float(sum(per_shard)) / len(per_shard), rel=1e-12)


def test_m_sharpness_one_step_linf_matches_closed_form() -> None:
    model, a, w, c = _quadratic_setup()
    got = m_sharpness(model, mean_loss, c, torch.zeros(N), m=4, rho=RHO, p=math.inf)
    per_shard = [
        RHO * g.abs().sum() + 0.5 * RHO**2 * (g.sign() @ a @ g.sign())
        for g in _shard_grads(a, w, c, 4)
    ]
    assert got == pytest.approx(float(sum(per_shard)) / len(per_shard), rel=1e-12)


@pytest.mark.parametrize("steps", [2, 20])
def test_m_sharpness_ascent_isotropic_equals_exact_max(steps: int) -> None:
    """For A = a I the max over the rho-ball is rho ||g|| + 0.5 a rho^2 (projection must keep
    the iterates inside the ball)."""
    model, _, w, c = _quadratic_setup(isotropic=True)
    got = m_sharpness(model, mean_loss, c, torch.zeros(N), m=3, rho=RHO, ascent_steps=steps)
    exact = [
        RHO * g.norm() + 0.5 * 2.0 * RHO**2
        for g in _shard_grads(2.0 * torch.eye(D, dtype=DT), w, c, 3)
    ]
    assert got == pytest.approx(float(sum(exact)) / len(exact), rel=1e-12)


def _ball_max(a: Tensor, g: Tensor, rho: float) -> float:
    """max_{||e|| <= rho} g.e + 0.5 e^T A e for A > 0: e = (mu I - A)^{-1} g, ||e|| = rho."""
    eye = torch.eye(len(g), dtype=DT)
    lam = float(torch.linalg.eigvalsh(a)[-1])

    def excess(mu: float) -> float:
        return float(torch.linalg.solve(mu * eye - a, g).norm()) - rho

    mu = brentq(excess, lam + 1e-12, lam + float(g.norm()) / rho + 1.0, xtol=1e-15)
    e = torch.linalg.solve(mu * eye - a, g)
    return float(g @ e + 0.5 * e @ a @ e)


def test_m_sharpness_many_steps_reach_the_exact_ball_max_anisotropic() -> None:
    model, a, w, c = _quadratic_setup()
    y = torch.zeros(N)
    exact = sum(_ball_max(a, g, RHO) for g in _shard_grads(a, w, c, 4)) / 3
    one = m_sharpness(model, mean_loss, c, y, m=4, rho=RHO)
    many = m_sharpness(model, mean_loss, c, y, m=4, rho=RHO, ascent_steps=100)
    assert one < exact
    assert many == pytest.approx(exact, rel=1e-9)


def test_m_sharpness_restores_weights_buffers_and_grads_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Softplus(), nn.Linear(8, 2))
    model.train()
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    value = m_sharpness(model, F.cross_entropy, x, y, m=4, rho=0.05, ascent_steps=3)
    assert value > 0
    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def _dropout_problem() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 2)).to(DT)
    return model.train(), torch.randn(12, 3, dtype=DT), torch.randint(0, 2, (12,))


@pytest.mark.parametrize("m", [3, 12])
def test_m_sharpness_in_train_mode_replays_dropout_masks(m: int) -> None:
    """At rho = 0 the gap is exactly 0 even with dropout on: w and w + eps see the same masks."""
    model, x, y = _dropout_problem()
    assert m_sharpness(model, F.cross_entropy, x, y, m=m, rho=0.0, ascent_steps=2) == 0.0


def test_m_sharpness_with_dropout_matches_a_fixed_mask_reference() -> None:
    """One shard, one step, against the same network with one dropout mask drawn by hand."""
    model, x, y = _dropout_problem()
    torch.manual_seed(7)
    got = m_sharpness(model, F.cross_entropy, x, y, m=12, rho=0.05)
    torch.manual_seed(7)
    lin1, lin2 = model[0], model[3]
    mask = F.dropout(torch.ones(12, 16, dtype=DT), 0.5, training=True)  # Dropout's own draw
    params = [lin1.weight, lin1.bias, lin2.weight, lin2.bias]

    def loss_at(w: list[Tensor]) -> Tensor:
        return F.cross_entropy(F.linear(torch.tanh(F.linear(x, w[0], w[1])) * mask, w[2], w[3]), y)

    w0 = [q.detach().clone().requires_grad_() for q in params]
    grads = torch.autograd.grad(loss_at(w0), w0)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        gap = loss_at([q + 0.05 * g / norm for q, g in zip(w0, grads, strict=True)]) - loss_at(w0)
    assert gap > 0
    assert got == pytest.approx(float(gap), rel=1e-10)


def test_m_sharpness_quadratic_weights_bit_identical() -> None:
    model, _, w, c = _quadratic_setup()
    m_sharpness(model, mean_loss, c, torch.zeros(N), m=4, rho=RHO, ascent_steps=5)
    assert torch.equal(model.w.detach(), w)


@pytest.mark.parametrize(
    "kwargs",
    [{"m": 5}, {"m": 0}, {"m": 4, "rho": -0.1}, {"m": 4, "p": 3}, {"m": 4, "ascent_steps": 0}],
)
def test_m_sharpness_rejects_bad_arguments(kwargs: dict) -> None:
    model, _, _, c = _quadratic_setup()
    args = {"rho": RHO, **kwargs}
    with pytest.raises(UserError):
        m_sharpness(model, mean_loss, c, torch.zeros(N), **args)
