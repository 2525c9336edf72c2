"""--help of each console script teaches: what it does, its options with their values,
examples, where outputs go, under 60 lines; Hydra's own help stays at --hydra-help.

The lists the help must cover are read from configs/ here, so a group, option or shortcut
added there fails this test until the help names it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from helpers import config_keys
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sam.report import main as report_main
from sam.train import validate

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _tools() -> dict[str, str]:
    """Console scripts besides sam-train whose options are configs/<name>.yaml (Hydra
    apps such as sam-sharpness): name -> module."""
    tools = {}
    for target in SCRIPTS.values():
        module = target.split(":")[0]
        name = module.rsplit(".", 1)[1]
        if name != "train" and (CONFIGS / f"{name}.yaml").is_file():
            tools[name] = module
    return tools


TOOLS = _tools()
# the shortcuts issue 21 names, plus every top-level key a group interpolates (${rho}...)
NAMED_SHORTCUTS = {"rho", "m", "lam", "seed", "epochs", "batch_size", "lr", "device"}


HELPS = {  # name -> command; started together (each spends seconds importing torch)
    "train": ["sam.cli", "--help"],
    "train_overridden": ["sam.cli", "--help", "experiment=table1_wrn28_10", "dataset=cifar100"],
    "hydra": ["sam.cli", "--hydra-help"],
} | {name: [module, "--help"] for name, module in TOOLS.items()}


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """The stdout of each command of HELPS, which must exit 0 and print nothing else."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("SAM_DATA", None)
    procs = {name: subprocess.Popen([sys.executable, "-m", *args], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in HELPS.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0 and not stderr.strip(), f"{HELPS[name]}: {stderr}"
        out[name] = stdout
    return out


@pytest.fixture(scope="module")
def train_help(helps) -> str:
    return helps["train"]


def groups() -> dict[str, list[str]]:
    """Each config group of sam-train (a folder of configs/, hydra/* too) -> its options."""
    found = {}
    for folder in sorted(p for p in CONFIGS.rglob("*") if p.is_dir()):
        name = folder.relative_to(CONFIGS).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and name != "hydra/help":
            found[name] = options
    return found


def shortcuts() -> set[str]:
    top = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    used = set()
    for path in CONFIGS.glob("*/**/*.yaml"):  # the groups' files, not other tools' configs
        if path.relative_to(CONFIGS).parts[0] != "hydra":
            used |= set(re.findall(r"\$\{(\w+)\}", path.read_text()))
    return NAMED_SHORTCUTS | (used & set(top))


def entry(text: str, name: str) -> str:
    """The description of ``name`` in ``text``: the rest of the indented line that starts
    with it, and the more deeply indented lines under it ("" when there is none)."""
    found = re.search(rf"^( +){re.escape(name)} {{2,}}(\S.*(?:\n\1 {{2,}}.*)*)", text, re.M)
    return found.group(2) if found else ""


def described(text: str, name: str) -> bool:
    return entry(text, name) != ""


def test_sam_train_help_names_every_group_option_and_shortcut(train_help, monkeypatch):
    lines = train_help.rstrip("\n").splitlines()
    assert len(lines) <= 60 and lines[0].startswith("sam-train: ")
    assert "is powered by Hydra" not in train_help and "== Config ==" not in train_help
    for group, options in groups().items():
        assert described(train_help, group), f"the help does not describe group {group}"
        if not group.startswith("hydra/"):  # Hydra lists these itself ($APP_CONFIG_GROUPS)
            assert f"\n{group}: {', '.join(options)}\n" in train_help, group
    monkeypatch.delenv("SAM_DATA", raising=False)  # as run_help's sam-train
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train")
    for key in sorted(shortcuts()):
        assert described(train_help, key), f"the help does not describe shortcut {key}"
        assert entry(train_help, key).endswith(f"[{cfg[key]}]"), key  # its default


def test_sam_train_help_examples_and_outputs(train_help):
    examples = train_help.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) == 5
    assert [e.split()[0] for e in examples] == ["sam-train"] * 3 + ["sam-report", "tensorboard"]
    for example in examples[:3]:  # each sam-train example composes and validates
        args = [a for a in example.split()[1:] if "=" in a]
        sweep = [[a] if "," not in a else [f"{a.split('=')[0]}={v}"
                                           for v in a.split("=")[1].split(",")] for a in args]
        for i in range(max(len(s) for s in sweep)):
            overrides = [s[min(i, len(s) - 1)] for s in sweep]
            with initialize_config_module(config_module="sam.configs", version_base="1.3"):
                cfg = compose(config_name="train", overrides=overrides)
            OmegaConf.resolve(cfg)
            validate(cfg)
    assert "-m" in examples[1] and "experiment=" in examples[2]
    for words in ("results.json", "tensorboard/", "checkpoints/last.pt", "outputs/multirun",
                  "--hydra-help", "docs/"):
        assert words in train_help, words


def test_help_shows_the_values_of_the_overrides_given(helps):
    text = helps["train_overridden"]  # the recipe's m=32 and CIFAR-100 rho=0.1
    assert entry(text, "m").endswith("[32]") and entry(text, "rho").endswith("[0.1]")
    assert "now: dataset=cifar100 model=wrn28_10" in text


def test_hydra_help_is_still_hydras(helps):
    text = helps["hydra"]
    assert text.startswith("Hydra (") and "--hydra-help" in text and "== Flags ==" in text


def test_every_console_script_has_a_teaching_help():
    """sam-train, sam-report (argparse) and the Hydra tools below; a new script must join."""
    assert set(SCRIPTS) == {"sam-train", "sam-report", "sam-search"} | {
        f"sam-{name}" for name in TOOLS}
    assert "sharpness" in TOOLS


def test_sam_search_help_teaches(monkeypatch, capsys):
    """sam-search's options are the search node: every SearchSettings field is named."""
    import dataclasses

    from helpers import console_in_process

    from sam.cli.search import search_main
    from sam.settings.schema import SearchSettings

    code, out, _ = console_in_process(monkeypatch, capsys, "sam-search", search_main, "--help")
    lines = out.rstrip("\n").splitlines()
    assert code == 0 and len(lines) <= 60 and lines[0].startswith("sam-search: ")
    for field in dataclasses.fields(SearchSettings):
        assert f"  search.{field.name} " in out, field.name
    assert out.count("\n  sam-search ") >= 3 and "Outputs:" in out


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_tool_help_names_every_option(helps, name):
    text = helps[name]
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 60 and lines[0].startswith(f"sam-{name}: ")
    options = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())

    for key in config_keys(options):
        assert described(text, key), f"sam-{name} --help does not describe {key}"
    assert text.count(f"\n  sam-{name} ") >= 3 and "Outputs:" in text
    assert "--hydra-help" in text and "is powered by Hydra" not in text


def test_sam_report_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        report_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert len(text.rstrip("\n").splitlines()) <= 60
    assert text.count("\n  sam-report ") >= 3
    for words in ("results.json", "report.md", "report.csv", "curves.png", "msharpness.png",
                  "--out", "Exit status 2"):
        assert words in text, words
