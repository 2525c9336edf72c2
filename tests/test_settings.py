"""The typed settings (sam.settings): what a config may hold, checked once at the edge."""

import dataclasses
import math
from pathlib import Path

import pytest
from helpers import compose_train, settings_of

from sam.errors import UserError
from sam.settings import Settings, read_settings
from sam.settings.doc import BEGIN, END, settings_tables

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_page_lists_every_setting():
    """docs/configuration.md holds the tables generated from the schema, as they are now."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    committed = page[page.index(BEGIN): page.index(END) + len(END)]
    assert committed == settings_tables(), "run: python -m sam.settings (and paste it)"
    for group, cls in (("", Settings),):
        for f in dataclasses.fields(cls):
            if f.metadata:
                assert f"| `{group}{f.name}` |" in committed


@pytest.mark.parametrize("group", ["dataset", "augment", "optim", "schedule", "fidelity",
                                   "model"])
def test_every_option_of_every_group_reads_into_settings(group):
    """Each group file's keys are declared (an undeclared key would be refused)."""
    for path in sorted((ROOT / "configs" / group).glob("*.yaml")):
        extra = ["dataset.num_classes=3"] if path.stem == "imagefolder" else []
        s = settings_of(compose_train(f"{group}={path.stem}", *extra))
        assert isinstance(s, Settings)


def test_settings_are_typed_and_frozen():
    s = settings_of(compose_train("experiment=demo", "dataset.subset=512"))
    assert (s.epochs, s.batch_size, s.dataset.subset, s.optim.name) == (20, 128, 512, "sam")
    assert s.optim.rho == 0.1 and s.optim.spec["_target_"] == "sam.optim.SAM"
    assert s.dataset.crop_scale == (0.08, 1.0)  # lists become tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("override, message", [
    ("lr=inf", "lr=inf: must be a finite number"),
    ("rho=nan", "rho=nan: must be a finite number"),
    ("epochs=0", "epochs=0: must be an integer >= 1"),
    ("batch_size=1.5", "batch_size=1.5: must be an integer >= 1"),
    ("bn_eval_mode=1", "bn_eval_mode=1: must be true or false"),
    ("lam=-1e-4", "lam=-0.0001: must be a number >= 0"),
    ("label_smoothing=1.0", "label_smoothing=1.0: must be a number in [0, 1)"),
    ("dataset.val_fraction=1", "dataset.val_fraction=1: must be a number in [0, 1)"),
    ("dataset.subset=0", "dataset.subset=0: must be an integer >= 1 or null"),
    ("m=0", "m=0: must be an integer >= 1 or null"),
    ("amp=fp8", "amp='fp8': use auto, bf16, fp16 or off"),
    ("optim.p=3", "optim.p=3: use 2 or inf"),
    ("epochs=ten", "epochs='ten': must be an integer >= 1"),
    ("+dataset.colour=1", "dataset.colour: not a setting of dataset"),
    ("sharpness.every=-1", "sharpness.every=-1: must be an integer >= 0"),
    ("schedule.warmup_epochs=300", "schedule.warmup_epochs=300: must be a number in [0, "
                                   "epochs=200)"),
])
def test_a_bad_value_is_one_line_naming_the_override(override, message):
    with pytest.raises(UserError) as err:
        settings_of(compose_train(override))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_checks_take_the_numbers_as_given():
    """A value at its bound is accepted; just past it is not (hand-picked bounds)."""
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose_train(), resolve=True)
    assert read_settings(base | {"label_smoothing": 0.0}).label_smoothing == 0.0
    assert read_settings(base | {"label_smoothing": 0.999}).label_smoothing == 0.999
    assert read_settings(base | {"checkpoint_every_steps": 0}).checkpoint_every_steps == 0
    with pytest.raises(UserError, match="checkpoint_every_steps=-1"):
        read_settings(base | {"checkpoint_every_steps": -1})
    optim = base["optim"] | {"p": math.inf}
    assert read_settings(base | {"optim": optim}).optim.p == math.inf
