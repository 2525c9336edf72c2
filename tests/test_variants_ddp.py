"""SAM's variants and ablations under DistributedDataParallel (2 CPU processes, gloo):
each rank is one m-sharpness shard, so a DDP step must equal a single-process
``sam_step(..., m=B/2)`` on the global batch (the variant's rule applied per shard, the
results averaged; BatchNorm included), as plain SAM does (tests/test_distributed.py);
with sync_ascent (a model without BatchNorm) it must equal the variant on the global
batch. LookSAM keeps per-process state and refuses DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from torch import nn

from sam.optim import GSAM, SAM, LookSAM, param_groups, sam_step

WORLD, BATCH, STEPS = 2, 8, 2
CASES = {  # name: (optimizer class, options, SAM-ON groups?, sync_ascent)
    "gsam": (GSAM, {"alpha": 0.5}, False, False),
    "ascent_steps": (SAM, {"ascent_steps": 3}, False, False),
    "second_order": (SAM, {"second_order": True}, False, False),
    "random": (SAM, {"ascent": "random", "seed": 5}, False, False),
    "sam_on": (SAM, {}, True, False),
    "ascent_steps_sync": (SAM, {"ascent_steps": 3}, False, True),
    "random_sync": (SAM, {"ascent": "random", "seed": 5}, False, True),
}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 7), nn.Tanh(),
                         nn.Linear(7, 3)).double()


def net_for(name: str) -> nn.Module:
    return mlp() if CASES[name][3] else bn_net()


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(BATCH, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (BATCH,), generator=g)) for _ in range(STEPS)]


def make_opt(name: str, net: nn.Module) -> SAM:
    cls, kw, on, _ = CASES[name]
    params = param_groups(net, 0.5, "norm") if on else net.parameters()
    return cls(params, torch.optim.SGD, rho=0.5 if on else 0.05, lr=0.1, momentum=0.9,
               wd_mode="loss", weight_decay=5e-4, **kw)


def train(name: str, model: nn.Module, local: bool) -> dict:
    net = model.module if local else model
    opt = make_opt(name, net)
    sync = CASES[name][3]
    for x, y in batches():
        if local:
            r = dist.get_rank()
            x, y = x.tensor_split(WORLD)[r], y.tensor_split(WORLD)[r]
            sam_step(model, opt, F.cross_entropy, x, y, sync_ascent=sync)
        else:  # per-rank eps: shards of the per-rank batch; synchronised: the global batch
            sam_step(model, opt, F.cross_entropy, x, y, m=None if sync else BATCH // WORLD,
                     shard_impl="loop")
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        states = {name: train(name, nn.parallel.DistributedDataParallel(net_for(name)), True)
                  for name in CASES}
        ddp = nn.parallel.DistributedDataParallel(bn_net())
        opt = LookSAM(ddp.module.parameters(), torch.optim.SGD, lr=0.1)
        try:
            sam_step(ddp, opt, F.cross_entropy, *batches()[0])
            states["looksam"] = "ran"
        except ValueError as err:
            states["looksam"] = str(err)
        torch.save(states, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_states(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_variants")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_variant_step_equals_single_process_shards(ddp_states, name):
    expected = train(name, net_for(name), local=False)
    start = net_for(name).state_dict()
    for rank_state in ddp_states:
        for k in expected:
            torch.testing.assert_close(rank_state[name][k], expected[k], rtol=0, atol=1e-10,
                                       msg=k)
    assert max((expected[k].double() - start[k].double()).abs().max().item()
               for k in start) > 1e-3


def test_looksam_refuses_ddp_ranks(ddp_states):
    for state in ddp_states:
        assert "per-process state" in state["looksam"]
