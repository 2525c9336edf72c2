"""SAM under DistributedDataParallel: 2 CPU processes (gloo) against single-process
references, and `torchrun -m sam.cli` end to end.

What "the same" means with BatchNorm: by default each rank is one m-sharpness shard, so
a DDP step equals a single-process ``sam_step(..., m=B/2)`` on the global batch in
everything, BatchNorm included: every pass normalises with the shard's (= rank's) own
batch statistics and the running statistics end as the mean of the shards' updates
(sam_step averages them across ranks). The synchronised ascent equals plain SAM
(m = B) only without BatchNorm (or with SyncBatchNorm): each rank still normalises with
its own half-batch statistics, so (b) uses a model without BatchNorm; likewise SGD
under DDP equals SGD on the global batch only without BatchNorm.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import compose_train, free_port, settings_of
from torch import nn

from sam import SAM, distributed, sam_step
from sam.data import AutoAugmentLoader, DeviceLoader, _AADataset, make_loader
from sam.errors import UserError
from sam.train import place

WORLD, BATCH, STEPS = 2, 8, 2
ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).double()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 7), nn.Tanh(),
                         nn.Linear(7, 3)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(BATCH, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (BATCH,), generator=g)) for _ in range(STEPS)]


def make_opt(model: nn.Module, sam: bool = True) -> torch.optim.Optimizer:
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if sam:
        return SAM(model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    return torch.optim.SGD(model.parameters(), **kw)


# name: (model, SAM?, m inside sam_step, sync_ascent, single-process m on the global batch)
CASES = {
    "default_bn": (bn_net, True, None, False, BATCH // WORLD),
    "shards_in_rank_bn": (bn_net, True, 2, False, 2),
    "sync_ascent": (mlp, True, None, True, None),
    "sgd": (mlp, False, None, False, None),
}


def train(name: str, model: nn.Module, local: bool) -> dict:
    """STEPS steps of CASES[name]: on this rank's half of each batch (local) or on the
    global batch in one process with the reference m."""
    _, is_sam, m, sync, ref_m = CASES[name]
    opt = make_opt(model.module if local else model, is_sam)
    for x, y in batches():
        if local:
            r = dist.get_rank()
            x, y = x.tensor_split(WORLD)[r], y.tensor_split(WORLD)[r]
            sam_step(model, opt, F.cross_entropy, x, y, m=m, sync_ascent=sync)
        else:
            sam_step(model, opt, F.cross_entropy, x, y, m=ref_m)
    net = model.module if local else model
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


FIRST_BAD = [(0, 0), (0, 7), (5, 7), (9, 3)]  # (rank 0, rank 1) first NaN/inf steps


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        states = {}
        for name, (factory, *_rest) in CASES.items():
            ddp = nn.parallel.DistributedDataParallel(factory())
            states[name] = train(name, ddp, local=True)
        # first NaN step per rank (0: none) -> what every rank is told
        states["first_bad"] = [int(distributed.first_step_across_ranks(torch.tensor(v[rank])))
                               for v in FIRST_BAD]
        torch.save(states, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_states(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_step_equals_single_process_reference(ddp_states, name):
    """(a) default: per-rank perturbation = sam_step(m=B/2) on the global batch, BN
    running stats included; m inside ranks = sam_step(m); (b) sync_ascent = plain SAM
    (m=B); SGD = SGD on the global batch. The descent gradient is averaged exactly once
    (twice would halve the update, never would leave the ranks apart)."""
    factory = CASES[name][0]
    expected = train(name, factory(), local=False)
    start = factory().state_dict()
    for rank_state in ddp_states:
        got = rank_state[name]
        assert got.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-10, msg=k)
    moved = max((expected[k].double() - start[k].double()).abs().max().item() for k in start)
    assert moved > 1e-3  # the steps did something
    if name == "sync_ascent":  # and it is not the per-rank (m = B/2) update
        per_rank = train("default_bn", copy.deepcopy(factory()), local=False)
        assert any((per_rank[k] - expected[k]).abs().max() > 1e-8 for k in expected)


def test_all_ranks_agree_on_the_first_bad_step(ddp_states):
    """Every rank stops at the earliest step any rank saw a NaN/inf loss (0: none)."""
    for state in ddp_states:
        assert state["first_bad"] == [0, 7, 5, 3]


def test_sync_ascent_outside_ddp_changes_nothing():
    a, b = mlp(), mlp()
    for x, y in batches():
        sam_step(a, make_opt(a), F.cross_entropy, x, y, sync_ascent=True)
        sam_step(b, make_opt(b), F.cross_entropy, x, y)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(),
                                                      strict=True))


@pytest.mark.parametrize("overrides, words", [
    (dict(batch_size=33), "batch_size=33 is not divisible by the 2 processes"),
    (dict(m=32), "m=32 does not divide the per-rank batch 16"),
    (dict(m=3), "m=3 does not divide the per-rank batch 16"),
    (dict(m=8, ddp_sync_ascent=True), "m=8 with ddp_sync_ascent=true"),
    (dict(m=3, optim={"name": "sgd"}), "m=3 does not divide the per-rank batch 16"),  # BN
    (dict(sync_bn=True), "sync_bn=true needs CUDA"),
])
def test_multi_process_config_errors(monkeypatch, overrides, words):
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = settings_of(compose_train("batch_size=32", "m=null", "optim=sam", "device=cpu"))

    def settings(**changes):  # values changed after the single-process checks
        name = changes.pop("optim", {"name": "sam"})["name"]
        return replace(base, optim=replace(base.optim, name=name), **changes)

    with pytest.raises(UserError, match=words):
        place(settings(**overrides))
    for fine in (dict(m=8), dict(m=32, ddp_sync_ascent=True), dict(optim={"name": "sgd"}),
                 dict(optim={"name": "sgd"}, m=8)):
        place(settings(**fine))


def _aa_loader(drop_last: bool) -> AutoAugmentLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (20, 3, 32, 32), generator=g, dtype=torch.uint8)
    loader = make_loader(x, torch.arange(20), batch_size=6, device="cpu", mean=(0.5,) * 3,
                         std=(0.25,) * 3, augment="autoaugment", shuffle=True,
                         drop_last=drop_last, seed=1)
    assert isinstance(loader, AutoAugmentLoader)
    return loader


def _slices(batches: list, rank: int, world: int) -> list:
    """Rank ``rank``'s ``tensor_split`` rows of each batch, empty ones left out."""
    cut = [(x.tensor_split(world)[rank], y.tensor_split(world)[rank]) for x, y in batches]
    return [(x, y) for x, y in cut if len(y)]


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (xg, yg), (xw, yw) in zip(got, want, strict=True):
        assert torch.equal(xg, xw) and torch.equal(yg, yw)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sharded_autoaugment_loader_fetches_only_its_rows(monkeypatch, world, drop_last):
    """Each rank's AutoAugment batches (Cutout included) are bit for bit the tensor_split
    slices of the unsharded loader's, over 2 epochs, and its DataLoader fetches and
    augments only those rows. 20 images in batches of 6: without drop_last the last
    batch has 2 rows, so with 3 ranks rank 2 gets none of it."""
    fetched: list[int] = []  # sample indices (= labels) passed to __getitem__
    getitem = _AADataset.__getitem__

    def counting(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        fetched.append(i)
        return getitem(self, i)

    monkeypatch.setattr(_AADataset, "__getitem__", counting)
    full = _aa_loader(drop_last)
    full.set_epoch(3)
    epochs = [list(full), list(full)]  # epochs 3 and 4 (a pass advances the epoch)
    assert len(fetched) == 2 * (18 if drop_last else 20)  # each sample once an epoch
    for rank in range(world):
        fetched.clear()
        sharded = distributed.ShardedLoader(_aa_loader(drop_last), rank, world)
        assert len(sharded) == len(full)
        sharded.set_epoch(3)
        got = [list(sharded), list(sharded)]
        assert sharded.epoch == 5
        for got_epoch, full_epoch in zip(got, epochs, strict=True):
            _assert_same(got_epoch, _slices(full_epoch, rank, world))
        assert fetched == [i for epoch in got for _, y in epoch for i in y.tolist()]


def test_sharded_device_loader_is_sliced_unchanged():
    """Loaders without set_shard (the device loaders, evaluation included) are sliced by
    ShardedLoader: an uneven last batch of 2 over 3 ranks leaves rank 2 without it."""
    x = torch.randint(0, 256, (10, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)

    def loader() -> DeviceLoader:
        return DeviceLoader(x, torch.arange(10), 4, "cpu", (0.5,) * 3, (0.25,) * 3,
                            augment="cutout", drop_last=False, seed=2)

    full = list(loader())
    for rank in range(3):
        sharded = distributed.ShardedLoader(loader(), rank, 3)
        assert not sharded.loader_shards and len(sharded) == 3
        _assert_same(list(sharded), _slices(full, rank, 3))


def sam_train_torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "-m", "sam.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, text=True, capture_output=True, timeout=600)


SMALL = ["dataset=synthetic", "model=resnet20", "batch_size=32", "dataset.train_size=128",
         "dataset.test_size=64", "eval_batch_size=48", "epochs=1"]


def test_torchrun_writes_one_result_equal_to_single_process_m(tmp_path):
    """(c) torchrun with 2 ranks: one results.json (rank 0) complete, nothing else written
    by rank 1, and the same run as one process with m = the per-rank batch (16)."""
    proc = sam_train_torchrun(*SMALL, "hydra.run.dir=ddp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("results.json")] == \
        [Path("ddp/results.json")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no stray run dirs
    assert (proc.stdout + proc.stderr).count("epoch 1/1") == 1  # rank 1 prints nothing
    r = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert r["status"] == "complete" and r["error"] is None
    assert r["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch": 16,
                                "sync_ascent": False, "sync_bn": False, "effective_m": 16}
    assert r["summary"]["m"] == 16  # the report groups it with single-process m=16 runs
    single = subprocess.run([sys.executable, "-m", "sam.cli", *SMALL, "m=16",
                             "hydra.run.dir=single"], cwd=tmp_path, env=ENV, text=True,
                            capture_output=True, timeout=600)
    assert single.returncode == 0, single.stderr
    s = json.loads((tmp_path / "single" / "results.json").read_text())
    assert s["summary"]["m"] == 16
    for key in ("train_loss", "train_error", "test_loss", "test_error"):
        assert r["final"][key] == pytest.approx(s["final"][key], rel=1e-4, abs=1e-4), key


def test_torchrun_bad_split_is_one_line_per_rank(tmp_path):
    proc = sam_train_torchrun("dataset=synthetic", "model=resnet20", "epochs=1",
                              "batch_size=33", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "sam-train" in ln]
    assert sorted(ln.split(":")[0] for ln in lines) == ["sam-train", "sam-train[rank 1]"]
    assert all("batch_size=33 is not divisible" in ln for ln in lines), proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_effective_m_is_the_examples_behind_one_eps():
    """m, else the per-rank batch (each rank its own eps), else with synchronised ascent
    the global batch; what results.json's summary and the sharpness logging default to."""
    def m(world, m=None, sync=False):
        return distributed.effective_m(64, m, world, sam=True, sync_ascent=sync)

    assert m(1) == 64
    assert m(4) == 16
    assert m(4, m=8) == 8
    assert m(4, sync=True) == 64
    assert m(1, sync=True) == 64
    assert m(2) == 32  # a checkpoint of 2 ranks
