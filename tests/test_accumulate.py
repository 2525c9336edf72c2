"""Gradient accumulation (sam_step(..., accumulate=k), the ``accumulate`` key): against a
hand-written full-batch SAM/SGD step in float64, BatchNorm statistics against a hand loop,
the saved-activation memory of one micro-batch, the config and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import compose_train, free_port
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

from sam.errors import UserError
from sam.optim import GSAM, SAM, Descent, sam_step
from sam.results import comparable_config
from sam.train import validate

B, RHO, LR, MOMENTUM, WD = 16, 0.1, 0.2, 0.9, 1e-2


def mlp(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 12), *([nn.BatchNorm1d(12)] if bn else []), nn.Tanh(),
              nn.Linear(12, 3)]
    return nn.Sequential(*layers).double()


def data(n: int = B, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,),
                                                                               generator=g)


def make(model: nn.Module, kind: str, wd_mode: str = "base",
         clip: float | None = None) -> torch.optim.Optimizer:
    kw = dict(lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD, wd_mode=wd_mode,
              max_grad_norm=clip)
    if kind == "sgd":
        return Descent(model.parameters(), torch.optim.SGD, **kw)
    if kind == "gsam":
        return GSAM(model.parameters(), torch.optim.SGD, rho=RHO, alpha=0.3, **kw)
    return SAM(model.parameters(), torch.optim.SGD, rho=RHO, **kw)


# ---- the reference: full-batch SAM (or SGD, or m-sharpness) written out by hand ----------

def grad_of_mean_loss(model, w: dict, buffers: dict, x, y, piece: int) -> dict:
    """grad of (1/n) sum_j CE_mean(x_j) over pieces x_j of ``piece`` examples, each piece
    a forward of its own (BatchNorm: its own statistics; the buffers are copies)."""
    w = {n: t.detach().requires_grad_() for n, t in w.items()}
    losses = [F.cross_entropy(functional_call(model, {**w, **{n: b.clone() for n, b in
                                                              buffers.items()}}, (xs,)), ys)
              for xs, ys in zip(x.split(piece), y.split(piece), strict=True)]
    grads = torch.autograd.grad(torch.stack(losses).mean(), list(w.values()))
    return dict(zip(w, grads, strict=True))


def reference_steps(model: nn.Module, x, y, kind: str, steps: int = 2, wd_mode: str = "base",
                    m: int = B, piece: int = B, clip: float | None = None) -> dict:
    """``steps`` steps from the model's weights: SAM with shards of m (m = B: plain SAM;
    eps_i = rho g_i/||g_i|| per shard, descent = mean_i g'_i) or SGD (g), the L2 term in
    the loss (wd_mode="loss": g + WD w, g' + WD (w + eps)) or in the base step, the
    descent gradient d clipped to norm ``clip`` (d <- d clip/||d||), then SGD with
    Nesterov momentum: buf <- mu buf + d, w <- w - lr (d + mu buf)."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    buf = None
    l2 = WD if wd_mode == "loss" else 0.0
    for _ in range(steps):
        shard_grads = []
        for xs, ys in zip(x.split(m), y.split(m), strict=True):
            g = grad_of_mean_loss(model, w, buffers, xs, ys, min(piece, m))
            if kind == "sgd":
                shard_grads.append({n: g[n] + l2 * w[n] for n in w})
                continue
            a = {n: g[n] + l2 * w[n] for n in w}
            norm = torch.sqrt(sum((t * t).sum() for t in a.values()))
            moved = {n: w[n] + RHO * a[n] / norm for n in w}
            g2 = grad_of_mean_loss(model, moved, buffers, xs, ys, min(piece, m))
            shard_grads.append({n: g2[n] + l2 * moved[n] for n in w})
        d = {n: sum(s[n] for s in shard_grads) / len(shard_grads) for n in w}
        if clip is not None:
            norm = torch.sqrt(sum((t * t).sum() for t in d.values()))
            assert norm > clip  # the clipping is exercised
            d = {n: t * clip / norm for n, t in d.items()}
        if wd_mode == "base":
            d = {n: d[n] + WD * w[n] for n in w}
        buf = d if buf is None else {n: MOMENTUM * buf[n] + d[n] for n in w}
        w = {n: w[n] - LR * (d[n] + MOMENTUM * buf[n]) for n in w}
    return w


def assert_weights(model: nn.Module, expected: dict, tol: float = 1e-10) -> None:
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=0, atol=tol, msg=n)


@pytest.mark.parametrize("kind", ["sam", "sgd"])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("wd_mode, clip", [("base", None), ("loss", None), ("loss", 0.05)])
def test_accumulate_equals_the_full_batch_step(kind: str, k: int, wd_mode: str,
                                               clip: float | None) -> None:
    x, y = data()
    model = mlp()
    expected = reference_steps(model, x, y, kind, wd_mode=wd_mode, clip=clip)
    opt = make(model, kind, wd_mode, clip)
    w0 = [p.detach().clone() for p in model.parameters()]
    out_at_w0 = model(x).detach()
    loss, out = sam_step(model, opt, F.cross_entropy, x, y, accumulate=k, return_outputs=True)
    # the batch's mean loss at w and the outputs of all micro-batches, in order
    torch.testing.assert_close(loss, F.cross_entropy(out_at_w0, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, out_at_w0, rtol=0, atol=1e-12)
    assert not torch.equal(next(model.parameters()), w0[0])
    sam_step(model, opt, F.cross_entropy, x, y, accumulate=k)
    assert_weights(model, expected)


@pytest.mark.parametrize("m, k", [(4, 2), (2, 4), (8, 4), (4, 4)])
def test_accumulate_with_m_keeps_one_eps_per_shard(m: int, k: int) -> None:
    """Shards of m (own eps each) in micro-batches of B/k: m <= B/k shard by shard, m >
    B/k a shard accumulated over its micro-batches; either way m-sharpness exactly."""
    x, y = data()
    model = mlp()
    expected = reference_steps(model, x, y, "sam", m=m)
    opt = make(model, "sam")
    for _ in range(2):
        sam_step(model, opt, F.cross_entropy, x, y, m=m, accumulate=k)
    assert_weights(model, expected)


def test_gsam_accumulates_to_its_full_batch_step() -> None:
    x, y = data()
    a, b = mlp(), mlp()
    sam_step(a, make(a, "gsam"), F.cross_entropy, x, y)
    sam_step(b, make(b, "gsam"), F.cross_entropy, x, y, accumulate=4)
    assert_weights(b, dict(a.named_parameters()), tol=1e-12)


def test_grad_scaler_accumulates_and_skips_a_non_finite_micro_batch() -> None:
    x, y = data()
    x = x.float()
    model = mlp().float()
    expected = reference_steps(mlp(), x.double(), y, "sam", steps=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = make(model, "sam")
    sam_step(model, opt, F.cross_entropy, x, y, scaler=scaler, accumulate=2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), expected[n], rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in model.parameters()]
    bad = x.clone()
    bad[-1, 0] = float("inf")  # in the last micro-batch only
    sam_step(model, opt, F.cross_entropy, bad, y, scaler=scaler, accumulate=2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert scaler.get_scale() < 2.0**10


# ---- BatchNorm: statistics per micro-batch, one update per step, none from w + eps -------

@pytest.mark.parametrize("kind", ["sam", "sgd"])
@pytest.mark.parametrize("k", [2, 4])
def test_batchnorm_running_stats_are_the_mean_of_the_micro_batch_updates(kind, k) -> None:
    x, y = data()
    model = mlp(bn=True)
    bn = model[1]
    lin = model[0]
    start_mean, start_var = bn.running_mean.clone(), bn.running_var.clone()
    # the hand loop: micro-batch j normalised with its own (mean_j, var_j) at w
    with torch.no_grad():
        h = x @ lin.weight.T + lin.bias
    mu = bn.momentum
    means = [(1 - mu) * start_mean + mu * hj.mean(0) for hj in h.split(B // k)]
    vars_ = [(1 - mu) * start_var + mu * hj.var(0, unbiased=True) for hj in h.split(B // k)]
    expected_mean, expected_var = sum(means) / k, sum(vars_) / k
    # the weights: each micro-batch's forward with its own statistics, in both passes
    expected_w = reference_steps(model, x, y, kind, steps=1, piece=B // k)
    seen = []
    bn.register_forward_hook(lambda mod, i, o: seen.append(
        (mod.running_mean.clone(), mod.running_var.clone(), int(mod.num_batches_tracked))))
    sam_step(model, make(model, kind), F.cross_entropy, x, y, accumulate=k)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=0, atol=1e-12)
    assert int(bn.num_batches_tracked) == 1
    assert_weights(model, expected_w)
    passes = 2 * k if kind == "sam" else k
    assert len(seen) == passes
    for mean, var, tracked in seen[k:]:  # the perturbed passes changed no buffer
        assert torch.equal(mean, bn.running_mean) and torch.equal(var, bn.running_var)
        assert tracked == 1


def test_batchnorm_in_eval_mode_accumulates_to_the_full_batch_step() -> None:
    """bn_eval_mode (fine-tuning): BatchNorm normalises with its running statistics, so
    the micro-batches see the statistics the whole batch does: exactly SAM on the batch."""
    x, y = data()
    model = mlp(bn=True)
    model[1].eval()
    model[1].running_mean.fill_(0.3)
    before = model[1].running_mean.clone()
    expected = reference_steps(model, x, y, "sam")
    opt = make(model, "sam")
    for _ in range(2):
        sam_step(model, opt, F.cross_entropy, x, y, accumulate=4)
    assert_weights(model, expected)
    assert torch.equal(model[1].running_mean, before)


def test_perturbed_pass_replays_each_micro_batchs_dropout_mask() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 3)).double()
    masks = []
    model[1].register_forward_hook(lambda mod, i, o: masks.append(o.detach() != 0))
    x, y = data()
    sam_step(model, make(model, "sam"), F.cross_entropy, x, y, accumulate=4)
    assert len(masks) == 8
    for clean, perturbed in zip(masks[:4], masks[4:], strict=True):
        assert torch.equal(clean, perturbed)
    assert not torch.equal(masks[0], masks[1])  # each micro-batch draws its own


# ---- memory: the saved activations of one micro-batch, not of the batch ------------------

class SavedActivations:
    """Counts the bytes of the tensors autograd keeps for backward (parameters excepted)
    while they are alive: a saved_tensors_hooks pack hook wraps each in a holder whose
    release (the graph freed by backward) subtracts its bytes; ``peak`` is the maximum."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        if t.untyped_storage().data_ptr() in self.params:
            return t
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        holder = _Held(t)
        weakref.finalize(holder, self._release, size)
        return holder

    def _release(self, size: int) -> None:
        self.live -= size

    @staticmethod
    def unpack(held):
        return held.t if isinstance(held, _Held) else held


class _Held:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


@pytest.mark.parametrize("kind", ["sam", "sgd"])
def test_peak_saved_activations_are_one_micro_batchs(kind: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))
    peaks = {}
    for k in (1, 4):
        meter = SavedActivations(model)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            sam_step(model, make(model, kind), F.cross_entropy, x, y, accumulate=k)
        assert meter.live == 0  # every graph was freed
        peaks[k] = meter.peak
    # input, two hidden layers of 256 (+ ReLU masks), logits: >= 256 x 512 floats at k=1
    assert peaks[1] >= 256 * 512 * 4
    assert peaks[4] <= 1.05 * peaks[1] / 4, peaks


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_of_a_step_drops_with_accumulate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10)).cuda()
    x = torch.randn(32768, 64, device="cuda")
    y = torch.randint(0, 10, (32768,), device="cuda")
    peaks = {}
    for k in (1, 8):
        opt = make(model, "sam")
        sam_step(model, opt, F.cross_entropy, x, y, accumulate=k)  # optimizer state exists
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sam_step(model, opt, F.cross_entropy, x, y, accumulate=k)
        torch.cuda.synchronize()
        peaks[k] = torch.cuda.max_memory_allocated() - base
    # activations (32768 x 1024 floats a layer) dominate the 1.1M parameters' gradients
    assert peaks[8] < 0.4 * peaks[1], peaks


# ---- under DDP: k ranks x accumulate=a equal one process with accumulate=k a -------------

DDP_CASES = {"sync_ascent": (True, None), "per_rank": (False, B // 2)}  # sync, reference m


def ddp_train(name: str, model: nn.Module, rank: int | None) -> dict:
    """2 steps: on this rank's half of each batch with accumulate=2 (rank given), or in
    one process on the whole batch with accumulate=4 and the reference m."""
    sync, m = DDP_CASES[name]
    opt = make(model.module if rank is not None else model, "sam")
    for step in range(2):
        x, y = data(seed=10 + step)
        if rank is not None:
            sam_step(model, opt, F.cross_entropy, x.tensor_split(2)[rank],
                     y.tensor_split(2)[rank], sync_ascent=sync, accumulate=2)
        else:
            sam_step(model, opt, F.cross_entropy, x, y, m=m, accumulate=4)
    net = model.module if rank is not None else model
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        states = {name: ddp_train(name, nn.parallel.DistributedDataParallel(mlp(bn=True)),
                                  rank) for name in DDP_CASES}
        torch.save(states, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_accumulating_equal_one_process_accumulating(tmp_path) -> None:
    """With BatchNorm: micro-batches of 2 everywhere, so the same statistics; sync_ascent
    is SAM on the global batch (one eps), by default each rank is a shard of m = B/2
    (its own eps, accumulated over its micro-batches); running stats: the mean of all."""
    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in DDP_CASES:
        expected = ddp_train(name, mlp(bn=True), None)
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}.pt")[name]
            for key, value in expected.items():
                torch.testing.assert_close(got[key], value, rtol=0, atol=1e-10, msg=key)


# ---- the config key, its checks and a run ------------------------------------------------

def test_accumulate_composes_with_default_one() -> None:
    assert compose_train().accumulate == 1
    cfg = compose_train("accumulate=4", "m=32", "batch_size=256")
    assert cfg.accumulate == 4
    validate(cfg)
    validate(compose_train("accumulate=4", "m=128", "batch_size=256"))  # 64 divides 128
    validate(compose_train("accumulate=2", "optim=gsam"))
    validate(compose_train("accumulate=2", "optim=sgd", "m=16"))


def test_a_run_recorded_before_the_key_resumes_as_accumulate_1() -> None:
    new = OmegaConf.to_container(compose_train())
    old = {k: v for k, v in new.items() if k != "accumulate"}
    assert comparable_config(old) == comparable_config(new)
    two = OmegaConf.to_container(compose_train("accumulate=2"))
    assert comparable_config(old) != comparable_config(two)


@pytest.mark.parametrize("overrides, words", [
    (["accumulate=3"], "accumulate=3 does not divide the (per-rank) batch 256"),
    (["accumulate=0"], "accumulate=0: must be an integer >= 1"),
    (["accumulate=2.5"], "accumulate=2.5: must be an integer"),
    (["batch_size=96", "accumulate=4", "m=32"], "micro-batch of 24 and the shard of 32"),
    (["accumulate=2", "optim=looksam"], "optim=looksam"),
    (["accumulate=2", "optim=sam_multistep"], "ascent_steps"),
    (["accumulate=2", "optim=sam_second_order"], "second_order"),
    (["accumulate=2", "optim=sam_random"], "ascent=random"),
    (["accumulate=2", "m_impl=vmap"], "m_impl=vmap"),
])
def test_accumulate_refusals_are_one_line(overrides: list[str], words: str) -> None:
    with pytest.raises(UserError) as err:
        validate(compose_train(*overrides))
    message = str(err.value)
    assert words in message and "\n" not in message and ": " in message


def test_sam_step_refuses_what_it_cannot_accumulate() -> None:
    x, y = data()
    model = mlp()
    with pytest.raises(ValueError, match="does not divide"):
        sam_step(model, make(model, "sam"), F.cross_entropy, x, y, accumulate=3)
    multistep = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, ascent_steps=2)
    with pytest.raises(ValueError, match="not accumulated"):
        sam_step(model, multistep, F.cross_entropy, x, y, accumulate=2)


ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)
SMALL = ["dataset=synthetic", "model=resnet20", "batch_size=32", "dataset.train_size=64",
         "dataset.test_size=32", "eval_batch_size=32", "epochs=1", "amp=off"]


def sam_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam.cli", *SMALL, *args], env=ENV,
                          text=True, capture_output=True, timeout=600)


def test_cli_trains_with_accumulate_and_refuses_a_bad_one_with_exit_2(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = sam_train("accumulate=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "complete" and r["config"]["accumulate"] == 2
    bad = sam_train("accumulate=5", f"hydra.run.dir={tmp_path / 'bad'}")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "accumulate=5 does not divide" in lines[0]
