"""model=timm (issue 16 items 1 and 6): pretrained timm nets from a local weights file, the
head replaced, the input converted on the device, through sam-train and its resume.

Tiny timm test nets (test_resnet: 0.37M parameters, test_vit: 0.31M) with random weights
that the tests save themselves: nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import timm
import torch
import torch.nn.functional as F
from cifar_files import write_fake_cifar10
from helpers import compose_train, settings_of
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from sam.data import CIFAR_STATS
from sam.errors import UserError
from sam.models.timm_model import TimmInput, timm_model
from sam.sharpness import hvp_fn
from sam.train import Data, run, runner
from sam.train.build import model_inputs

ENV_CLI = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def random_net(name: str, num_classes: int, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def save(state: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


# ---------------------------------------------------------------- weights from a local file
@pytest.mark.parametrize("name, head", [("test_resnet", "fc"), ("test_vit", "head")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_file_gives_the_backbone_exactly_and_a_new_head(tmp_path, name, head, suffix):
    src = random_net(name, 7).state_dict()
    state = src
    if suffix == ".pth":  # as a DDP training script saves it: wrapped, "module." keys
        state = {"state_dict": {f"module.{k}": v for k, v in src.items()}}
    save(state, tmp_path / f"w{suffix}")
    model = timm_model(name, 3, str(tmp_path / f"w{suffix}"), MEAN, STD)
    got = model.net.state_dict()
    backbone = [k for k in src if not k.startswith(head + ".")]
    assert len(backbone) > 20 and set(got) == set(src)
    for k in backbone:
        assert torch.equal(got[k], src[k]), k
    assert got[f"{head}.weight"].shape == (3, src[f"{head}.weight"].shape[1])
    assert got[f"{head}.bias"].shape == (3,)


def test_a_head_of_the_same_shape_is_kept_unless_keep_head_is_false(tmp_path):
    # as the official code: a 1000-class checkpoint fine-tuned on 1000 classes keeps its head
    src = random_net("test_resnet", 5).state_dict()
    save(src, tmp_path / "w.safetensors")
    kept = timm_model("test_resnet", 5, str(tmp_path / "w.safetensors"), MEAN, STD).net
    assert torch.equal(kept.fc.weight, src["fc.weight"])
    new = timm_model("test_resnet", 5, str(tmp_path / "w.safetensors"), MEAN, STD,
                     keep_head=False).net
    assert not torch.equal(new.fc.weight, src["fc.weight"])
    assert torch.equal(new.conv1[0].weight, src["conv1.0.weight"])


def test_the_head_is_randomly_initialised_as_timm_does(tmp_path):
    # the file's head (another shape) is dropped, the new head is the fresh model's
    save(random_net("test_resnet", 7).state_dict(), tmp_path / "w.pth")
    a = timm_model("test_resnet", 3, str(tmp_path / "w.pth"), MEAN, STD).net.fc.weight
    fresh = random_net("test_resnet", 3, seed=1).fc.weight
    assert a.std() > 0 and math.isclose(a.std().item(), fresh.std().item(), rel_tol=0.5)


def test_a_vit_at_another_size_gets_its_position_embedding_resampled(tmp_path):
    src = random_net("test_vit", 7).state_dict()  # built for 160x160: 10x10 patches
    save(src, tmp_path / "w.safetensors")
    model = timm_model("test_vit", 3, str(tmp_path / "w.safetensors"), MEAN, STD, img_size=32)
    got = model.net.state_dict()
    assert got["pos_embed"].shape == (1, 1 + 2 * 2, 64)  # class token + 2x2 patches
    assert torch.equal(got["pos_embed"][:, 0], src["pos_embed"][:, 0])  # class token kept
    # the 10x10 grid of patch embeddings resized to 2x2 with PIL's bicubic (timm's choice)
    grid = src["pos_embed"][0, 1:].double().T.reshape(64, 10, 10)
    w = resize_matrix(10, 2, "bicubic")
    want = (w @ grid @ w.T).reshape(64, 4).T
    assert torch.allclose(got["pos_embed"][0, 1:].double(), want, atol=1e-6, rtol=0)
    for k in src:
        if k != "pos_embed" and not k.startswith("head."):
            assert torch.equal(got[k], src[k]), k
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3) and model.size == (32, 32)


def test_the_config_builds_the_model_with_its_pretrained_input_settings():
    cfg = compose_train("model=timm", "dataset=cifar100")
    assert cfg.model._target_ == "sam.models.timm_model.timm_model"
    assert cfg.model.num_classes == 100 and cfg.model.pretrained is False
    assert cfg.model.name == "resnet18" and cfg.model.img_size is None
    cfg.model.name = "test_resnet"
    model = instantiate(cfg.model, in_mean=MEAN, in_std=STD)
    ref = timm.create_model("test_resnet").pretrained_cfg  # timm's own record of it
    assert isinstance(model, TimmInput) and model.net.fc.out_features == 100
    assert model.size == tuple(ref["input_size"][1:]) and model.mode == ref["interpolation"]
    assert model.mean.flatten().tolist() == list(ref["mean"])
    assert model.std.flatten().tolist() == list(ref["std"])


@pytest.mark.parametrize("keep_head", [True, False])
def test_hub_is_timms_own_download_and_keep_head_false_resets_its_head(monkeypatch, keep_head):
    real_create = timm.create_model
    made = {}

    def downloaded(name, pretrained=False, **kwargs):  # stands for timm's download
        assert pretrained is True
        made["net"] = real_create(name, **kwargs)
        made["fc"] = made["net"].fc.weight.detach().clone()
        return made["net"]

    monkeypatch.setattr(timm, "create_model", downloaded)
    model = timm_model("test_resnet", 4, "hub", MEAN, STD, keep_head=keep_head)
    assert model.net is made["net"] and model.net.fc.out_features == 4
    assert torch.equal(model.net.fc.weight, made["fc"]) == keep_head


def test_hub_offline_is_one_line_naming_the_fix(monkeypatch):
    calls = []

    def offline(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore text")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError) as err:
        timm_model("test_resnet", 4, "hub", MEAN, STD)
    assert calls == [("test_resnet", True, {"num_classes": 4})]
    msg = str(err.value)
    assert "\n" not in msg and "couldn't connect" in msg and "model.pretrained=" in msg


# ------------------------------------------------------------------------------- bad inputs
def test_bad_weights_files_are_one_line_errors_naming_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "absent.pth"
    save(random_net("test_vit", 7).state_dict(), tmp_path / "vit.safetensors")
    narrow = random_net("test_resnet", 7).state_dict()
    narrow["layer1.0.conv1.weight"] = torch.zeros(5, 32, 3, 3)  # one tensor misshapen
    save(narrow, tmp_path / "narrow.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    cases = {missing: ["no such file"],
             tmp_path / "vit.safetensors": ["missing keys conv1.0.weight", "unexpected keys"],
             tmp_path / "narrow.pth": ["layer1.0.conv1.weight is 5x32x3x3 in the file"],
             tmp_path / "junk.pth": ["not a readable weights file"]}
    for path, words in cases.items():
        with pytest.raises(UserError) as err:
            timm_model("test_resnet", 3, str(path), MEAN, STD)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "pretrained=True" in msg, msg
        assert all(w in msg for w in words), msg


def test_unknown_names_and_sizes_are_one_line_errors():
    with pytest.raises(UserError, match="close: resnet18"):
        timm_model("resnet_18", 3)
    with pytest.raises(UserError, match="model.img_size"):
        timm_model("test_resnet", 3, img_size=[32])
    with pytest.raises(UserError, match="model.interpolation"):
        timm_model("test_resnet", 3, interpolation="lanczos")


def test_cli_exits_2_with_one_line_for_a_wrong_architecture_file(tmp_path):
    save(random_net("test_vit", 10).state_dict(), tmp_path / "vit.pth")
    proc = subprocess.run(
        [sys.executable, "-m", "sam.cli", "dataset=synthetic", "model=timm",
         "model.name=test_resnet", f"model.pretrained={tmp_path / 'vit.pth'}", "epochs=1",
         "batch_size=32", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **ENV_CLI})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "vit.pth" in lines[0] and "missing keys" in lines[0]


# ------------------------------------------------------------------- the input conversion
def resize_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """(n_out, n_in) weights of PIL's resampling filter (float64, written out here):
    output i is centred at (i + 1/2) s in input coordinates (s = n_in / n_out); input j
    at j + 1/2 weighs k((j + 1/2 - centre) / max(s, 1)), k the triangle (bilinear) or
    Keys' cubic with a = -1/2 (bicubic); weights beyond the border are dropped and each
    row renormalized to sum 1."""
    a = -0.5

    def k(x: float) -> float:
        x = abs(x)
        if mode == "bilinear":
            return max(0.0, 1 - x)
        if x < 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    s = n_in / n_out
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        for j in range(n_in):
            w[i, j] = k((j + 0.5 - (i + 0.5) * s) / max(s, 1.0))
    return w / w.sum(1, keepdim=True)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("n_in, n_out", [(16, 8), (6, 9), (12, 12)])
def test_the_input_is_unnormalized_resized_and_renormalized(mode, n_in, n_out):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, n_in, n_in, generator=g, dtype=torch.float64)
    in_mean, in_std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = ((pixels - in_mean.double()) / in_std.double()).float()  # what the loaders give
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    wrapper = TimmInput(nn.Identity(), (n_out, n_out), mode, mean, std, MEAN, STD)
    got = wrapper(x).double()
    w = resize_matrix(n_in, n_out, mode)
    want = (w @ pixels @ w.T).clamp(0, 1)  # an 8-bit resize cannot leave [0, 1]
    want = (want - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(got, want, atol=2e-5, rtol=0)


def test_one_channel_images_are_repeated_to_the_nets_three():
    pixels = torch.rand(2, 1, 8, 8)
    wrapper = TimmInput(nn.Identity(), (8, 8), "bilinear", [0.5] * 3, [0.5] * 3, [0.2], [0.4])
    got = wrapper((pixels - 0.2) / 0.4)
    assert got.shape == (2, 3, 8, 8)
    for c in range(3):
        assert torch.allclose(got[:, c], (pixels[:, 0] - 0.5) / 0.5, atol=1e-6)


def test_hessian_vector_products_of_a_vit_match_finite_differences():
    # fused attention kernels have no double backward: sam-sharpness, sharpness.every and
    # optim.second_order need the math kernel there (sam/sharpness/hessian.py)
    model = timm_model("test_vit", 3, in_mean=MEAN, in_std=STD, img_size=16).double().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(sum(p.numel() for p in params), generator=g, dtype=torch.float64)
    v /= v.norm()
    hv = hvp_fn(model, F.cross_entropy, [(x, y)])(v)

    def grad_at(t: float) -> torch.Tensor:  # grad L(w + t v), flattened
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w + t * v, params)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        return torch.cat([gr.flatten() for gr in grads])

    w = torch.nn.utils.parameters_to_vector(params).detach().clone()
    h = 1e-4
    fd = (grad_at(h) - grad_at(-h)) / (2 * h)  # error O(h^2) in float64
    assert torch.allclose(hv, fd, rtol=0, atol=1e-7 * fd.abs().max().item())


def test_sam_train_passes_the_loaders_normalization_to_the_model():
    # in-memory data: the splits' mean/std; image files: dataset.mean/std, ImageNet's if null
    cfg = compose_train("model=timm", "dataset=svhn")
    splits = SimpleNamespace(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    data = Data(None, None, 10, "svhn", "test", "", splits=splits)
    assert model_inputs(settings_of(cfg), data) == {"in_mean": [0.1, 0.2, 0.3],
                                                    "in_std": [0.4, 0.5, 0.6]}
    images = Data(None, None, 10, "imagefolder", "test", "")
    cfg = compose_train("model=timm", "dataset=imagefolder", "dataset.mean=null",
                        "dataset.std=null", "dataset.num_classes=10")
    assert model_inputs(settings_of(cfg), images) == {"in_mean": [0.485, 0.456, 0.406],
                                         "in_std": [0.229, 0.224, 0.225]}
    cfg = compose_train("model=timm", "dataset=imagefolder", "dataset.mean=[0.5,0.5,0.5]",
                        "dataset.std=[0.2,0.2,0.2]", "dataset.num_classes=10")
    assert model_inputs(settings_of(cfg), images) == {"in_mean": [0.5] * 3, "in_std": [0.2] * 3}
    assert model_inputs(settings_of(compose_train("model=timm", "model.in_mean=[0,0,0]",
                                                  "model.in_std=[1,1,1]")), data) == {}  # by hand
    assert model_inputs(settings_of(compose_train("model=resnet20")), data) == {}  # not timm


# ---------------------------------------------------------------------------- in sam-train
def train_cfg(root, weights, name, *overrides):
    return compose_train(
        "dataset=cifar10", f"data_dir={root}", "dataset.verify=false", "model=timm",
        f"model.name={name}", f"model.pretrained={weights}", "model.img_size=40",
        "batch_size=10", "eval_batch_size=64", "epochs=2", "device=cpu", "optim=sam",
        *overrides)


@pytest.mark.parametrize("name, head, size", [("test_resnet", "fc", 40), ("test_vit", "head", 32)])
def test_sam_train_fine_tunes_from_the_file_and_resumes(tmp_path, name, head, size):
    root = tmp_path / "data"
    write_fake_cifar10(root, per_batch=8, n_test=11)  # 40 training images: 4 steps an epoch
    src = random_net(name, 1000, **({"img_size": size} if name == "test_vit" else {}))
    src = src.state_dict()  # a ViT's saved at the size it trains at: every tensor as it is
    save(src, tmp_path / "w.safetensors")
    cfg = train_cfg(root, tmp_path / "w.safetensors", name, f"model.img_size={size}")
    first = {}
    real_build = runner.build

    def spy(*args):  # the weights sam-train starts from, before any step
        setup = real_build(*args)
        first.update({k: v.clone() for k, v in setup.net.state_dict().items()})
        return setup

    with mock.patch.object(runner, "build", spy):
        run(cfg, tmp_path / "full")
    for k, v in src.items():
        if not k.startswith(f"{head}."):
            assert torch.equal(first[f"net.{k}"], v), k
    assert first[f"net.{head}.weight"].shape == (10, src[f"{head}.weight"].shape[1])
    assert first["in_mean"].flatten().tolist() == pytest.approx(CIFAR_STATS["cifar10"][0])
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    assert full["status"] == "complete" and len(full["history"]) == 2
    assert full["summary"]["model"] == f"timm/{name}"
    last = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    trained = [k for k, v in src.items() if v.is_floating_point()
               and not torch.equal(last["model"][f"net.{k}"], v)]
    assert len(trained) > 10  # it did train
    # what sam-sharpness / sam-landscape do: rebuild from the recorded config, load the
    # checkpoint; the loaders' normalization comes back with it
    rebuilt = instantiate(OmegaConf.create(full["config"]).model)
    rebuilt.load_state_dict(last["model"])
    assert rebuilt.in_std.flatten().tolist() == pytest.approx(CIFAR_STATS["cifar10"][1])

    # cut after epoch 1 of 2, run again: it resumes and ends where the full run did
    real_epoch = runner.run_epoch

    def cut(cfg, setup, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(cfg, setup, epoch, **kw)

    with mock.patch.object(runner, "run_epoch", cut), pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "part")
    assert len(json.loads((tmp_path / "part" / "results.json").read_text())["history"]) == 1
    run(cfg, tmp_path / "part")
    part = json.loads((tmp_path / "part" / "results.json").read_text())
    assert part["status"] == "complete" and part["final"] == full["final"]
