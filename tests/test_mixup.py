"""Mixup (augment.mixup_alpha, sam/data/mixup.py): the mixed batch and its loss against a
batch worked out by hand, the draw, SAM's two passes on one mixed batch, exact resume, and
the one-line refusal of a bad alpha."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import TINY_RUN, compose_train, console_in_process, preempt_after_steps
from torch import nn

from sam.cli.train import train_main
from sam.data.device_loader import DeviceLoader
from sam.data.mixup import MixupLoader, hard_labels, mix, mixup_draw
from sam.errors import UserError
from sam.optim import SAM, sam_step
from sam.train import Preempted, run, validate
from sam.train.loop import training_loss

# 128 synthetic images in batches of 16: 8 steps per epoch (tests/test_reliability.py's)
TINY = TINY_RUN


def config(*overrides: str):
    return compose_train(*TINY, *overrides)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py's: one torch thread


# ------------------------------------------------------------------ the batch, by hand
X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 0])
LAM, PERM = 0.25, torch.tensor([1, 2, 3, 0])
# 0.25 x_i + 0.75 x_perm(i), worked out by hand
MIXED = [[2.5, 3.5], [4.5, 5.5], [6.5, 7.5], [2.5, 3.5]]
# y[perm] = [1, 2, 0, 0]: 0.25 onehot(y_i) + 0.75 onehot(y_perm(i))
TARGETS = [[0.25, 0.75, 0.0], [0.0, 0.25, 0.75], [0.75, 0.0, 0.25], [1.0, 0.0, 0.0]]
LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.5, -0.5, 0.0], [-2.0, 0.0, 1.0]]


def hand_loss(logits, y, y_perm, lam, smoothing=0.0) -> float:
    """Zhang et al.'s loss, lam CE(y) + (1 - lam) CE(y[perm]), in Python floats; with label
    smoothing a each CE is (1 - a)(-log p_y) + a mean_k(-log p_k)."""
    total = 0.0
    for row, a, b in zip(logits, y, y_perm, strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = [log_z - v for v in row]

        def ce(label, nll=nll):
            return (1 - smoothing) * nll[label] + smoothing * sum(nll) / len(nll)

        total += lam * ce(a) + (1 - lam) * ce(b)
    return total / len(logits)


def test_the_mixed_batch_and_its_loss_match_the_hand_computed_ones():
    x, t = mix(X, Y, LAM, PERM, 3)
    assert x.tolist() == MIXED and t.tolist() == TARGETS
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    y_perm = [1, 2, 0, 0]
    for smoothing in (0.0, 0.1):
        got = training_loss(smoothing)(logits, t).item()
        assert got == pytest.approx(
            hand_loss(LOGITS, Y.tolist(), y_perm, LAM, smoothing), rel=1e-12
        )
    # the train error counts the label of the larger weight: y[perm] here (lam < 1/2)
    assert hard_labels(t).tolist() == y_perm
    assert hard_labels(Y).tolist() == Y.tolist()


def test_the_draw_is_beta_and_a_permutation_and_depends_on_seed_epoch_step_only():
    lam, perm = mixup_draw(8.0, 16, seed=3, epoch=2, step=5)
    again = mixup_draw(8.0, 16, seed=3, epoch=2, step=5)
    assert lam == again[0] and torch.equal(perm, again[1])
    assert sorted(perm.tolist()) == list(range(16)) and 0 < lam < 1
    others = {mixup_draw(8.0, 16, *key)[0] for key in [(4, 2, 5), (3, 3, 5), (3, 2, 6)]}
    assert lam not in others and len(others) == 3
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); 4000 draws, 5 standard errors
    for alpha in (1.0, 8.0):
        lams = np.array([mixup_draw(alpha, 4, 0, 0, k)[0] for k in range(4000)])
        var = 1 / (4 * (2 * alpha + 1))
        assert abs(lams.mean() - 0.5) < 5 * math.sqrt(var / 4000)
        assert abs(lams.var() - var) < 0.15 * var


def test_a_mixup_loader_resumed_inside_an_epoch_mixes_the_rest_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(48) % 10

    def make():
        inner = DeviceLoader(x, y, 8, "cpu", (0.5,) * 3, (0.25,) * 3, augment="cutout", seed=3)
        return MixupLoader(inner, 1.0, 10, seed=3)

    whole = make()
    whole.set_epoch(1)
    batches = list(whole)
    part = make()
    part.set_epoch(1)
    it = iter(part)
    for _ in range(2):
        next(it)
    position = part.position()
    assert set(position) == {"epoch", "step", "rng"}  # the loader's own format
    resumed = make()
    resumed.resume_at(position)
    rest = list(resumed)
    assert len(rest) == len(batches) - 2
    for (xa, ta), (xb, tb) in zip(batches[2:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert resumed.epoch == 2 and torch.allclose(batches[0][1].sum(1), torch.ones(8))


# ------------------------------------------------------------------ SAM's two passes
class Recorder(nn.Module):
    """A linear model that records every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3).double()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x)


@pytest.mark.parametrize("m", [None, 2])
def test_both_sam_passes_see_the_same_mixed_batch(m):
    model = Recorder()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    targets_seen = []

    def loss_fn(out, t):
        targets_seen.append(t.detach().clone())
        return training_loss(0.0)(out, t)

    x, t = mix(X, Y, LAM, PERM, 3)
    sam_step(model, opt, loss_fn, x, t, m=m, shard_impl="loop")
    shards = 1 if m is None else 4 // m
    assert len(model.seen) == 2 * shards  # clean and perturbed pass of each shard
    clean, perturbed = model.seen[0::2], model.seen[1::2]
    assert all(torch.equal(a, b) for a, b in zip(clean, perturbed, strict=True))
    assert torch.cat(clean).tolist() == MIXED  # the whole batch, mixed once before shards
    assert torch.cat(targets_seen[0::2]).tolist() == TARGETS
    assert all(
        torch.equal(a, b) for a, b in zip(targets_seen[0::2], targets_seen[1::2], strict=True)
    )


# ------------------------------------------------------------------ runs
def test_a_mixup_run_interrupted_inside_an_epoch_resumes_bit_identical(tmp_path, monkeypatch):
    """SAM + Mixup, m-sharpness shards of 4 (vmap), label smoothing and 40% noisy labels:
    stopped by SIGTERM at step 5 of epoch 2 and rerun, it ends as the uninterrupted run."""

    overrides = [
        "optim=sam",
        "augment.mixup_alpha=1.0",
        "m=4",
        "m_impl=vmap",
        "label_smoothing=0.1",
        "dataset.label_noise=0.4",
    ]
    cfg = config(*overrides)
    whole = run(cfg, tmp_path / "whole")
    assert whole["summary"]["mixup_alpha"] == 1.0 and whole["status"] == "complete"
    preempt_after_steps(monkeypatch, 13)
    with pytest.raises(Preempted):
        run(cfg, tmp_path / "part")
    monkeypatch.undo()
    resumed = run(cfg, tmp_path / "part")
    keys = ("train_loss", "train_error", "test_loss", "test_error")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [
        [h[k] for k in keys] for h in whole["history"]
    ]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert plain["config"]["augment"]["mixup_alpha"] == 1.0


@pytest.mark.parametrize("alpha", ["-1", "-0.5"])
def test_a_negative_alpha_is_refused_in_one_line(alpha, tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="0 for no Mixup"):
        validate(config(f"augment.mixup_alpha={alpha}"))
    code, _, err = console_in_process(
        monkeypatch,
        capsys,
        "sam-train",
        train_main,
        *TINY,
        f"augment.mixup_alpha={alpha}",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f"augment.mixup_alpha={alpha}:" in lines[0] and "0 for no Mixup" in lines[0]
    assert not (tmp_path / "r" / "results.json").exists()


def test_every_augment_option_has_mixup_off_and_the_loader_refuses_a_zero_alpha():
    for name in ("none", "basic", "cutout", "autoaugment"):
        assert config(f"augment={name}").augment.mixup_alpha == 0.0
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixupLoader([], 0.0, 10, seed=0)


def test_the_run_mixes_the_global_batch_before_ddp_slices_it():
    """build_data wraps the training loader, which mixes the (noisy) labels it trains on;
    under DDP each rank's slice is its rows of the one-process mixed batch (ShardedLoader
    slices what the MixupLoader yields)."""
    from helpers import settings_of, splits_of

    from sam.distributed import ShardedLoader
    from sam.train.build import build_data

    cfg = config("augment.mixup_alpha=2", "dataset.label_noise=0.4")
    s = settings_of(cfg)
    train = build_data(s, torch.device("cpu")).train
    assert isinstance(train, MixupLoader) and not hasattr(train, "set_shard")
    assert torch.equal(train.loader.y, splits_of(cfg).train_y)  # the noisy labels
    train.set_epoch(0)
    whole = list(train)
    x, t = whole[3]
    train.loader.set_epoch(0)
    x0, y0 = list(train.loader)[3]  # the same batch before mixing
    lam, perm = mixup_draw(2.0, 16, s.seed, 0, 3)
    assert torch.allclose(x, lam * x0 + (1 - lam) * x0[perm], atol=1e-6)
    for i in range(16):  # t_i = lam e_{y_i} + (1 - lam) e_{y_perm(i)}, entry by entry
        want = torch.zeros(10)
        want[y0[i]] += lam
        want[y0[perm[i]]] += 1 - lam
        assert torch.allclose(t[i], want, atol=1e-6)
    ranks = [ShardedLoader(build_data(s, torch.device("cpu")).train, r, 2) for r in (0, 1)]
    for sharded in ranks:
        sharded.set_epoch(0)
    parts = [list(sharded)[3] for sharded in ranks]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), t)


def test_a_run_recorded_before_mixup_and_bootstrap_resumes_and_differs_from_a_mixup_run():
    """KEYS_ADDED fills augment.mixup_alpha = 0 and bootstrap = null into an older config."""
    from omegaconf import OmegaConf

    from sam.results import comparable_config

    new = OmegaConf.to_container(config(), resolve=True)
    old = {k: v for k, v in new.items() if k != "bootstrap"}
    old["augment"] = {k: v for k, v in new["augment"].items() if k != "mixup_alpha"}
    assert comparable_config(old) == comparable_config(new)
    for other in ("augment.mixup_alpha=8", "bootstrap=/runs/a"):
        assert comparable_config(old) != comparable_config(
            OmegaConf.to_container(config(other), resolve=True)
        )
