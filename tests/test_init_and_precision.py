"""Issue 33: the initial weights' seed apart from the run seed (the official code starts every
run from PRNGKey(0)), and the fp32 precision of convolutions and matmuls, as settings that
results.json records."""

import torch
from helpers import compose_train, settings_of

from sam.results import comparable_config
from sam.runtime import fp32_precision, set_fp32_precision
from sam.train import run
from sam.train.build import Data, initial_model

TINY = ["dataset=synthetic", "model=resnet20", "model.depth=8", "batch_size=16",
        "dataset.train_size=64", "dataset.test_size=32", "eval_batch_size=32", "epochs=1",
        "deterministic=true", "device=cpu", "progress=false", "amp=off"]
NO_DATA = Data(None, None, 10, "synthetic", "test", "")


def weights(*overrides: str) -> dict[str, torch.Tensor]:
    s = settings_of(compose_train("model=resnet20", "model.depth=8", *overrides))
    torch.manual_seed(s.seed)  # what build's seed_everything does before the model
    return initial_model(s, NO_DATA).state_dict()


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_official_seeds_start_from_the_same_weights_and_pytorch_seeds_do_not():
    assert same(weights("seed=1"), weights("seed=2"))  # fidelity=official: init_seed 0
    assert same(weights("seed=1"), weights("seed=0"))  # seed 0's weights, as before
    assert not same(weights("fidelity=pytorch", "seed=1"), weights("fidelity=pytorch", "seed=2"))
    assert same(weights("fidelity=pytorch", "seed=3"), weights("init_seed=3", "seed=3"))
    assert not same(weights("init_seed=5", "seed=1"), weights("seed=1"))


def test_the_fixed_init_leaves_the_run_stream_alone():
    """The init's draws come from a stream of their own: after the model, the run's RNG is
    where seeding with ``seed`` alone put it (dropout and shake noise follow the seed)."""
    weights("seed=1")
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))


def test_a_run_records_its_init_seed_and_precision(tmp_path):
    official = run(compose_train(*TINY, "seed=1"), tmp_path / "official")
    assert official["summary"]["init_seed"] == 0
    assert official["fp32_precision"] == {"setting": "tf32", "conv": "fp32", "matmul": "fp32"}
    pytorch = run(compose_train(*TINY, "seed=1", "fidelity=pytorch"), tmp_path / "pytorch")
    assert pytorch["summary"]["init_seed"] is None
    assert pytorch["fp32_precision"]["setting"] == "default"


def test_a_cifar_run_recorded_before_this_change_resumes_with_seed_0():
    """Today's official seed-0 CIFAR config trains as one recorded before init_seed,
    fp32_precision and dataset_stats existed (none of them changes that run)."""
    from omegaconf import OmegaConf

    new = OmegaConf.to_container(compose_train("seed=0"), resolve=True)
    old = {k: v for k, v in new.items() if k != "init_seed"}
    old["fidelity"] = {k: v for k, v in new["fidelity"].items()
                       if k not in ("init_seed", "fp32_precision", "dataset_stats")}
    assert comparable_config(old) == comparable_config(new)
    assert comparable_config(old | {"seed": 1}) != comparable_config(new | {"seed": 1})


def test_runs_recorded_before_init_seed_resume_where_they_trained_alike():
    old = {"seed": 0, "fidelity": {"name": "official"}}  # no init_seed: the run seed
    assert comparable_config(old) == comparable_config(
        {"seed": 0, "init_seed": 0, "fidelity": {"name": "official", "init_seed": 0}})
    assert comparable_config(old | {"seed": 1}) != comparable_config(
        {"seed": 1, "init_seed": 0, "fidelity": {"name": "official", "init_seed": 0}})


def test_fp32_precision_sets_and_records_the_cuda_flags(monkeypatch):
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    try:
        cuda = torch.device("cuda")
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        set_fp32_precision("tf32")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        assert fp32_precision(cuda, None) == {"conv": "tf32", "matmul": "tf32"}
        assert fp32_precision(cuda, torch.bfloat16) == {"conv": "bf16", "matmul": "bf16"}
        set_fp32_precision("ieee")
        assert fp32_precision(cuda, None) == {"conv": "fp32", "matmul": "fp32"}
        set_fp32_precision("default")  # leaves the flags as they are
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        set_fp32_precision("tf32")
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
        assert fp32_precision(cuda, None) == {"conv": "fp32", "matmul": "fp32"}  # no TF32
        assert fp32_precision(torch.device("cpu"), None) == {"conv": "fp32", "matmul": "fp32"}
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
