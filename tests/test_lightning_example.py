"""examples/lightning_sam.py: N steps of Lightning's loop with the example's SAM module
equal N steps of ``sam_step`` (the library's functional step) on the same batches, to
float precision: parameters and BatchNorm running statistics, with dropout, the official
clipping and L2-in-the-loss, in fp32 and under bf16 autocast."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sam.optim import SAM, sam_step

L = pytest.importorskip("lightning")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_sam.py"
STEPS = 3
OPTIONS = dict(
    rho=0.05,
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    wd_mode="loss",
    max_grad_norm=0.1,
)


def example():
    spec = importlib.util.spec_from_file_location("lightning_sam", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(STEPS)
    ]


@pytest.mark.parametrize(
    "precision, amp_dtype", [("32-true", None), ("bf16-mixed", torch.bfloat16)]
)
def test_lightning_steps_equal_sam_step(tmp_path, precision, amp_dtype) -> None:
    ex = example()
    torch.manual_seed(0)
    net = ex.small_net()
    reference = ex.small_net()
    reference.load_state_dict(net.state_dict())
    data = batches()
    initial = net[0].weight.detach().clone()

    module = ex.SAMModule(net, **OPTIONS)
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        precision=precision,
        default_root_dir=tmp_path,
    )
    torch.manual_seed(7)  # the dropout draws of both runs
    loader = torch.utils.data.DataLoader(data, batch_size=None, generator=torch.Generator())
    trainer.fit(module, loader)  # (its own generator: no draw from the global RNG)
    assert trainer.global_step == STEPS

    opt = SAM(reference.parameters(), torch.optim.SGD, **OPTIONS)
    torch.manual_seed(7)
    for x, y in data:
        sam_step(reference, opt, F.cross_entropy, x, y, amp_dtype=amp_dtype)
        # the clipping acts: the descent gradient left in p.grad has norm max_grad_norm
        norm = torch.sqrt(sum((p.grad**2).sum() for p in reference.parameters()))
        assert norm.item() == pytest.approx(OPTIONS["max_grad_norm"], rel=1e-5)
    for (name, a), b in zip(net.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # BatchNorm: one update per step, from the clean pass only
    assert int(net[1].num_batches_tracked) == STEPS
    assert not torch.equal(net[0].weight.detach(), initial)  # both trained
