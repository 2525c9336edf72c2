"""Issue 34: a run directory is data. Opening someone else's (sam-sharpness, sam-landscape,
sam-correlate, a resume) can fail with one line, but never runs code it carries: checkpoints
load with ``torch.load(weights_only=True)`` and a stored config is instantiated only through
the allowlist of sam/stored_config.py. Every run this project writes still loads."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch
import yaml
from cifar_files import write_fake_cifar10, write_fake_cifar100
from helpers import compose_train
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torchvision.datasets import CIFAR10, CIFAR100

from sam.cli.trust_checkpoint import FLAG
from sam.cli.trust_checkpoint import main as trust_main
from sam.data import load_dataset, load_splits
from sam.data.datasets import _reader
from sam.data.fetch import DataMissing
from sam.errors import UserError
from sam.landscape.runs import load_run
from sam.results import load_checkpoint
from sam.settings import stored_dataset
from sam.sharpness import run_sharpness
from sam.sharpness.population import Run
from sam.sharpness.run_measures import MeasureSettings, measure_run
from sam.stored_config import GET_CLASS, TARGETS, checked_node, instantiate_stored
from sam.train import run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# 64 images in batches of 16: 4 steps an epoch; a ResNet-8 trains in a fraction of a second
TINY = ["dataset=synthetic", "batch_size=16", "dataset.train_size=64", "dataset.test_size=32",
        "eval_batch_size=32", "epochs=1", "device=cpu", "progress=false"]
RESNET8 = ["model=resnet20", "model.depth=8"]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
ENV.pop("HYDRA_FULL_ERROR", None)


def train_config(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        model = [] if any(o.startswith("model=") for o in overrides) else RESNET8
        return compose("train", overrides=[*TINY, *model, *overrides])


def sharpness_config(run_dir: Path):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        return compose("sharpness", overrides=[f"runs={run_dir}", "images=16",
                                               "batch_size=16", "k=5", "iters=5",
                                               "trace_samples=2", "slq.runs=0"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished two-epoch run (last.pt and last.prev.pt), copied by the tests that edit it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run(train_config("epochs=2"), run_dir)
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "shared_run"))


class Payload:
    """Pickled, it runs ``touch marker`` when unpickled: what a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def poisoned(trained, tmp_path) -> tuple[Path, Path]:
    """(a copy of the run whose last.pt carries a Payload, the marker it would write);
    its last.prev.pt stays a good checkpoint (no fallback to it may hide the refusal)."""
    run_dir, marker = copy_of(trained, tmp_path), tmp_path / "marker"
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "extra": Payload(marker)}, last)
    return run_dir, marker


# ------------------------------------------------------------ every legitimate run loads
KINDS = {
    "official": ["fidelity=official"], "pytorch": ["fidelity=pytorch"], "sgd": ["optim=sgd"],
    "gsam": ["optim=gsam"], "looksam": ["optim=looksam"], "accumulate": ["accumulate=2"],
    "label_noise": ["dataset.label_noise=0.2"],
    "mid_epoch": ["checkpoint_every_steps=3"],  # last.prev.pt: the one at step 3 of 4
    "timm": ["model=timm", "model.name=test_resnet", "model.img_size=32"],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_of_run_loads_as_data_and_rebuilds_from_its_stored_config(kind, tmp_path):
    run(train_config(*KINDS[kind]), tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    state, loaded, note = load_checkpoint(checkpoints / "last.pt")
    assert loaded == checkpoints / "last.pt" and note is None
    if kind == "mid_epoch":
        prev, _, _ = load_checkpoint(checkpoints / "last.prev.pt")
        assert prev is not None and prev["position"]["loader"]["step"] == 3
    config = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    model = instantiate_stored(config, "model", "results.json")
    model.load_state_dict(state["model"])
    for group in ("optim", "schedule"):
        checked_node(config, group, "results.json")


@pytest.mark.slow  # torchrun: three interpreters start (~8 s)
def test_a_ddp_checkpoint_loads_as_data(tmp_path):
    """Two ranks (gloo), a checkpoint inside the epoch: every rank's RNG and epoch sums."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sam.cli", *TINY, *RESNET8, "batch_size=32", "checkpoint_every_steps=1",
           "hydra.run.dir=ddp"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    checkpoints = tmp_path / "ddp" / "checkpoints"
    last, _, _ = load_checkpoint(checkpoints / "last.pt")
    prev, _, _ = load_checkpoint(checkpoints / "last.prev.pt")
    assert len(last["rng_ranks"]) == 2 and len(prev["position"]["meter_ranks"]) == 2


def test_a_stored_timm_model_is_rebuilt_without_reading_or_fetching_weights():
    """The run's checkpoint supplies the weights: model.pretrained (a file the sharer had,
    or hub: a download) is not followed."""
    for pretrained in ("/nonexistent/weights.pth", "hub"):
        config = OmegaConf.to_container(compose_train(
            "dataset=synthetic", "model=timm", "model.name=test_resnet",
            f"model.pretrained={pretrained}"))
        assert checked_node(config, "model", "results.json")["pretrained"] is False
        assert instantiate_stored(config, "model", "results.json").net.fc.out_features == 10


# --------------------------------------------------------------- the allowlist stays fresh
def targets(node, group: str) -> set[str]:
    """Every _target_ in a config file's node; get_class's as get_class(path)."""
    found: set[str] = set()
    if isinstance(node, dict):
        target = node.get("_target_")
        if target == GET_CLASS:
            found.add(f"{GET_CLASS}({node['path']})")
        elif target is not None:
            found.add(target)
        for value in node.values():
            found |= targets(value, group)
    elif isinstance(node, list):
        for value in node:
            found |= targets(value, group)
    return found


@pytest.mark.parametrize("group", ["model", "optim", "schedule"])
def test_the_allowlist_names_every_target_the_config_groups_offer(group):
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        for target in targets(yaml.safe_load(path.read_text()) or {}, group):
            if target.startswith(GET_CLASS):
                config = {group: {"_target_": GET_CLASS, "path": target[len(GET_CLASS) + 1:-1]}}
                checked_node({"optim": {"_target_": "sam.optim.SAM",
                                        "base_optimizer": config[group]}}, "optim", str(path))
            else:
                assert target in TARGETS[group], f"{path.name}: add {target} to TARGETS"
    for target in TARGETS[group]:  # each names something that exists
        module, name = target.rsplit(".", 1)
        assert hasattr(__import__(module, fromlist=[name]), name), target


def test_only_the_opt_in_loads_with_the_full_unpickler():
    """Every torch.load in the package passes weights_only=True, but the trust command's."""
    unsafe = []
    for path in sorted((CONFIGS.parent / "sam").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(path.name)
    assert unsafe == ["trust_checkpoint.py"]


# ------------------------------------------------------ a hostile checkpoint never runs
def test_a_pickled_payload_is_refused_by_the_loader_with_the_opt_in(poisoned):
    run_dir, marker = poisoned
    last = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as err:
        load_checkpoint(last)
    line = str(err.value)
    assert "\n" not in line and "posix.system" in line
    assert f"python -m sam.cli.trust_checkpoint {last} {FLAG}" in line
    assert not marker.exists()
    torch.load(last, weights_only=False)  # the payload is live: the full unpickler runs it
    assert marker.exists()


def test_a_pickled_payload_is_refused_by_sam_sharpness_and_sam_landscape(poisoned):
    run_dir, marker = poisoned
    with pytest.raises(UserError, match="trust_checkpoint"):
        run_sharpness(sharpness_config(run_dir))
    with pytest.raises(UserError, match="trust_checkpoint"):
        load_run(str(run_dir))
    assert not marker.exists() and not (run_dir / "sharpness.json").exists()


def test_a_pickled_payload_is_refused_by_a_resume(poisoned):
    run_dir, marker = poisoned
    results = json.loads((run_dir / "results.json").read_text())
    results["status"] = "preempted"  # stopped by a signal: rerunning resumes it
    (run_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="trust_checkpoint"):
        run(train_config("epochs=2"), run_dir)
    assert not marker.exists()
    assert "extra" in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


# ---------------------------------------------------- a hostile stored config never runs
HOSTILE = ["open", "os.system", "write_text", "import_module", "unknown class", "nested",
           "args", "partial", "interpolated"]


def hostile_models(tmp_path: Path) -> dict[str, dict]:
    """Stored model configs, each of which would write ``tmp_path/made`` if instantiated."""
    made = str(tmp_path / "made")
    touch = f"touch {shlex.quote(made)}"
    (tmp_path / "probe_on_import.py").write_text(f"open({made!r}, 'w').close()\n")
    return {
        "open": {"_target_": "builtins.open", "file": made, "mode": "w"},
        "os.system": {"_target_": "os.system", "_args_": [touch]},
        "write_text": {"_target_": "pathlib.Path.write_text", "data": "x",
                       "self": {"_target_": "pathlib.Path", "_args_": [made]}},
        "import_module": {"_target_": "importlib.import_module", "name": "probe_on_import"},
        "unknown class": {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1},
        "nested": {"_target_": "sam.models.resnet.CifarResNet", "depth": 8,
                   "num_classes": {"_target_": "builtins.open", "file": made, "mode": "w"}},
        "args": {"_target_": "sam.models.resnet.CifarResNet",
                 "_args_": [{"_target_": "builtins.open", "_args_": [made, "w"]}]},
        "partial": {"_target_": "builtins.print", "_partial_": True,
                    "file": {"_target_": "builtins.open", "file": made, "mode": "w"}},
        "interpolated": {"_target_": "${evil}", "file": made, "mode": "w"},
    }


@pytest.mark.parametrize("tool", ["sam-sharpness", "sam-landscape", "sam-correlate"])
@pytest.mark.parametrize("case", HOSTILE)
def test_a_stored_config_naming_anything_else_is_refused_before_any_call(
        trained, tmp_path, monkeypatch, tool, case):
    monkeypatch.syspath_prepend(str(tmp_path))  # probe_on_import is importable
    run_dir = copy_of(trained, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    models = hostile_models(tmp_path)
    assert sorted(models) == sorted(HOSTILE)
    results["config"]["model"] = models[case]
    results["config"]["evil"] = "builtins.open"
    (run_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="refused") as err:
        if tool == "sam-sharpness":
            run_sharpness(sharpness_config(run_dir))
        elif tool == "sam-correlate":  # one run of a population, measured as the tool does
            settings = MeasureSettings(images=16, seed=0, rho=0.05, ascent_steps=1,
                                       mode="train", gap_images=16)
            measure_run(Run(run_dir, results), settings, [4], batch_size=16,
                        device=torch.device("cpu"))
        else:
            load_run(str(run_dir)).model(torch.device("cpu"), torch.float32)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "made").exists() and "probe_on_import" not in sys.modules


def test_a_stored_dataset_never_unpickles_code(trained, tmp_path):
    run_dir, marker = copy_of(trained, tmp_path), tmp_path / "marker"
    folder = run_dir / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(Payload(marker)))
    results = json.loads((run_dir / "results.json").read_text())
    results["config"]["dataset"].update(name="cifar10", data_dir=str(run_dir / "data"),
                                        verify=False, download=False)
    (run_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="refuses to unpickle posix.system"):
        run_sharpness(sharpness_config(run_dir))
    assert not marker.exists()


def test_a_crafted_cifar_file_is_refused_in_one_line_naming_file_and_global(tmp_path):
    """dataset.verify=false reads CIFAR with an unpickler that resolves only numpy's array
    globals: a payload is named, never called, even by the corrupt-file explanation."""
    marker = tmp_path / "marker"
    write_fake_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({"data": Payload(marker), "labels": []}))
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", str(tmp_path), verify=False)
    line = str(err.value)
    assert "\n" not in line and str(bad) in line and "posix.system" in line
    assert "dataset.verify=true" in line and not marker.exists()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_restricted_cifar_reader_gives_torchvision_s_arrays(tmp_path, name):
    """The same data (layout, strides, bytes), targets and classes as torchvision's own
    reader (its full unpickler, md5 check skipped) on the test's fake files."""
    (write_fake_cifar10 if name == "cifar10" else write_fake_cifar100)(tmp_path)
    base = CIFAR10 if name == "cifar10" else CIFAR100
    for train in (True, False):
        ours = _reader(base, verify=False)(str(tmp_path), train=train)
        with patch.object(base, "_check_integrity", return_value=True), \
                patch("torchvision.datasets.cifar.check_integrity", return_value=True):
            theirs = base(str(tmp_path), train=train)
        assert ours.data.dtype == theirs.data.dtype == np.uint8
        assert ours.data.shape == theirs.data.shape and ours.data.shape[1:] == (32, 32, 3)
        assert ours.data.strides == theirs.data.strides
        assert np.array_equal(ours.data, theirs.data) and ours.targets == theirs.targets
        assert (ours.classes, ours.class_to_idx) == (theirs.classes, theirs.class_to_idx)


def test_a_stored_download_true_is_not_honoured(tmp_path, monkeypatch):
    """A run directory cannot make a tool fetch data into a folder its config names."""
    def fetch(*args):
        raise AssertionError(f"a stored config started a download: {args}")

    monkeypatch.setattr("sam.data.datasets.download_files", fetch)
    config = OmegaConf.to_container(compose_train(
        "dataset=cifar10", f"dataset.data_dir={tmp_path / 'elsewhere'}",
        "dataset.download=true"))
    assert config["dataset"]["download"] is True
    for data_dir in (None, str(tmp_path / "moved")):
        assert stored_dataset(config, data_dir).download is False
    with pytest.raises(DataMissing):  # absent: named, not fetched
        load_splits(stored_dataset(config), seed=0)
    assert not (tmp_path / "elsewhere").exists()


def test_an_optimizer_class_path_must_be_a_torch_optimizer():
    optim = {"_target_": "sam.optim.SAM", "base_optimizer": {"_target_": GET_CLASS}}
    for path in ("torch.optim.SGD", "torch.optim.AdamW"):
        optim["base_optimizer"]["path"] = path
        checked_node({"optim": optim}, "optim", "results.json")
    for path in ("os.system", "torch.optim.lr_scheduler.LambdaLR", "antigravity"):
        optim["base_optimizer"]["path"] = path
        with pytest.raises(UserError, match="refused"):
            checked_node({"optim": optim}, "optim", "results.json")


# ------------------------------------------------------------------- the console scripts
def test_sam_sharpness_refuses_a_payload_with_one_line_and_exit_2(poisoned):
    run_dir, marker = poisoned
    proc = subprocess.run([sys.executable, "-m", "sam.cli.sharpness", f"runs={run_dir}"],
                          env=ENV, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam-sharpness: error: checkpoint")
    assert not marker.exists()


def test_sam_landscape_refuses_a_stored_open_with_one_line_and_exit_2(trained, tmp_path):
    run_dir = copy_of(trained, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    results["config"]["model"] = hostile_models(tmp_path)["open"]
    (run_dir / "results.json").write_text(json.dumps(results))
    proc = subprocess.run([sys.executable, "-m", "sam.cli.landscape", f"runs={run_dir}",
                           f"out_dir={tmp_path / 'out'}"], env=ENV, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'builtins.open'" in lines[0] and "refused" in lines[0]
    assert not (tmp_path / "made").exists()


# ----------------------------------------------------------- the one opt-in for old files
def test_trusting_an_old_checkpoint_converts_it_once(trained, tmp_path):
    run_dir = copy_of(trained, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    # what another tool's checkpoint may hold: numpy arrays and numbers, an OmegaConf node
    torch.save({**state, "np_rng": np.random.RandomState(0).get_state(),
                "best": np.float64(0.5), "config": OmegaConf.create(state["config"])}, last)
    with pytest.raises(UserError, match="numpy"):
        load_checkpoint(last)
    with pytest.raises(UserError, match=FLAG):  # never without the explicit flag
        trust_main([str(last)])
    trust_main([str(last), FLAG])
    converted, loaded, _ = load_checkpoint(last)
    assert loaded == last and converted["best"] == 0.5 and converted["config"] == state["config"]
    assert torch.equal(converted["np_rng"][1], torch.from_numpy(np.random.RandomState(0)
                                                               .get_state()[1]))
    assert all(torch.equal(converted["model"][k], v) for k, v in state["model"].items())
    # an object with no plain-data form: named, and the file left as it was
    torch.save({**state, "odd": Fraction(1, 3)}, last)
    before = last.read_bytes()
    with pytest.raises(UserError, match="fractions.Fraction"):
        trust_main([str(last), FLAG])
    assert last.read_bytes() == before
