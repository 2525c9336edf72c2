"""CUDA-only checks (run by scripts/gpu_check.sh on a GPU machine; skipped elsewhere)."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sam import SAM, sam_step
from sam.data import DeviceLoader
from sam.models import build_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEV = torch.device("cuda")


def wrn(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("wrn16_8", num_classes=10, dropout=0.3).to(DEV).to(
        memory_format=torch.channels_last)


def make_sam(model):
    return SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9,
               nesterov=True, weight_decay=5e-4)


@pytest.mark.parametrize("m, impl", [(None, "loop"), (16, "loop"), (16, "vmap")])
def test_sam_step_has_no_host_device_sync(m, impl):
    """No step path reads a value back to the host (sync-debug mode turns a sync into an
    error; the shard implementation is named, so no fallback can hide one)."""
    model = wrn()
    opt = make_sam(model)
    x = torch.randn(64, 3, 32, 32, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=DEV)
    kw = dict(m=m, amp_dtype=torch.bfloat16, shard_impl=impl)
    sam_step(model, opt, F.cross_entropy, x, y, **kw)  # warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sam_step(model, opt, F.cross_entropy, x, y, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_training_loop_step_has_no_host_device_sync():
    """sam-train's step: sam_step, then the loss/error sums and the NaN check of every
    step (EpochMeter), still without a synchronising call (the check waits on an event
    of the copy the check before made, which sync-debug mode rightly does not count)."""
    from sam.train import EpochMeter

    model = wrn()
    opt = make_sam(model)
    x = torch.randn(64, 3, 32, 32, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=DEV)
    meter = EpochMeter(DEV, check_every=1)

    def step() -> None:
        loss, out = sam_step(model, opt, F.cross_entropy, x, y, amp_dtype=torch.bfloat16,
                             return_outputs=True)
        meter.update(loss, out, y)

    step()  # warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert meter.result()[2] == 3 * 64


@pytest.mark.parametrize("impl", ["loop", "vmap"])
def test_cuda_step_matches_cpu_float64(impl):
    """The same m-sharpness step (m=4) on CUDA as the per-shard loop on CPU, float64."""
    torch.manual_seed(0)
    cpu = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 5)).double()
    gpu = copy.deepcopy(cpu).to(DEV)
    x, y = torch.randn(16, 20, dtype=torch.float64), torch.randint(0, 5, (16,))
    sam_step(cpu, make_sam(cpu), F.cross_entropy, x, y, m=4, shard_impl="loop")
    sam_step(gpu, make_sam(gpu), F.cross_entropy, x.to(DEV), y.to(DEV), m=4, shard_impl=impl)
    for a, b in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=1e-12)


def test_sgd_shards_in_one_pass_equal_the_loop_on_cuda():
    """SGD with m < B on CUDA ("auto": one pass with per-shard BatchNorm statistics)
    equals the shard-by-shard loop, parameters and BN buffers, float64."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                            torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 3)).double().to(DEV)
    b = copy.deepcopy(a)
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64, device=DEV)
    y = torch.randint(0, 3, (16,), device=DEV)
    for net, impl in ((a, "loop"), (b, "auto")):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sam_step(net, opt, F.cross_entropy, x, y, m=4, shard_impl=impl)
    for ta, tb in zip([*a.parameters(), *a.buffers()], [*b.parameters(), *b.buffers()],
                      strict=True):
        torch.testing.assert_close(ta, tb, rtol=0, atol=1e-12)


def test_dropout_masks_replayed_on_cuda():
    model = wrn()
    outs = []
    model.fc.register_forward_hook(lambda mod, inp, out: outs.append(inp[0].detach().clone()))
    x = torch.randn(8, 3, 32, 32, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=DEV)
    opt = make_sam(model)
    opt.param_groups[0]["rho"] = 0.0  # eps = 0: both passes must then be identical
    sam_step(model, opt, F.cross_entropy, x, y)
    assert len(outs) == 2 and torch.equal(outs[0], outs[1])


def test_compiled_dropout_masks_replayed_on_cuda():
    """Under torch.compile both passes draw the same dropout mask on CUDA too: one weight,
    L = mean_j w drop(x_j), rho = 0, so SGD must land on w - lr L / w (tests/test_optim.py
    has the CPU twin)."""
    torch.manual_seed(0)
    drop = torch.nn.Sequential(torch.nn.Dropout(0.5),
                               torch.nn.Linear(1, 1, bias=False)).double().to(DEV)
    x = torch.rand(64, 1, dtype=torch.float64, device=DEV) + 1.0
    w = drop[1].weight.detach().clone()
    opt = SAM(drop.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)
    loss = sam_step(torch.compile(drop), opt, lambda out, _: out.mean(), x,
                    torch.zeros(64, device=DEV))
    assert abs(loss.item() - (w * x.mean()).item()) > 1e-3, "dropout must be active"
    torch.testing.assert_close(drop[1].weight.detach(), w - 0.1 * loss / w, rtol=0, atol=1e-14)


def test_divergence_step_is_exact_with_the_lagged_check_on_cuda():
    """On CUDA a check reads the copy the previous check made (no idle GPU): a NaN in
    batch 6 of 10 still reports step 6, whatever the check interval."""
    from test_faults import diverged_step

    for every in (1, 4, 50):
        assert diverged_step(DEV, every) == 6


def test_fp16_grad_scaler_skips_nonfinite_step_and_restores():
    model = wrn()
    opt = make_sam(model)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(8, 3, 32, 32, device=DEV)
    y = torch.randint(0, 10, (8,), device=DEV)
    sam_step(model, opt, F.cross_entropy, x, y, amp_dtype=torch.float16, scaler=scaler)
    before = [p.detach().clone() for p in model.parameters()]
    x[0, 0, 0, 0] = float("inf")
    sam_step(model, opt, F.cross_entropy, x, y, amp_dtype=torch.float16, scaler=scaler)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_device_loader_on_cuda_is_reproducible():
    x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (512,))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    a = DeviceLoader(x, y, 128, DEV, mean, std, augment="cutout", seed=3)
    b = DeviceLoader(x, y, 128, DEV, mean, std, augment="cutout", seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.device.type == "cuda" and xa.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sam_train_runs_on_cuda(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sam.cli", "dataset=synthetic", "model=wrn16_8", "epochs=2",
         "batch_size=128", "device=cuda", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"status": "complete"' in (tmp_path / "results.json").read_text()
