"""Every config group option composes, resolves and instantiates (Hydra compose API)."""

from pathlib import Path

import pytest
import torch
from helpers import settings_of, splits_of
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam.errors import UserError
from sam.optim import SAM
from sam.train import build_optimizer, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def make(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def test_defaults_are_the_paper_setting():
    cfg = make()
    assert (cfg.dataset.name, cfg.optim.name, cfg.augment.name) == ("cifar10", "sam", "basic")
    assert cfg.model._target_.endswith("WideResNet") and cfg.model.depth == 28
    assert cfg.batch_size == 256 and cfg.epochs == 200 and cfg.lr == 0.1
    assert cfg.optim.rho == 0.05 and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.momentum == 0.9 and cfg.optim.nesterov is True


@pytest.mark.parametrize("group", ["dataset", "model", "optim", "augment", "schedule",
                                   "experiment"])
def test_group_has_options(group):
    assert options(group), f"configs/{group} is empty"


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_configs(name):
    cfg = make(f"dataset={name}", "data_dir=/some/where")
    image_sets = {"flowers102": 102, "stanford_cars": 196, "fgvc_aircraft": 100,
                  "food101": 101, "oxford_pets": 37, "imagenet": 1000, "imagefolder": None}
    assert cfg.dataset.name == name and cfg.dataset.num_classes == image_sets.get(
        name, 100 if name == "cifar100" else 10)
    assert cfg.model.num_classes == cfg.dataset.num_classes
    if name != "synthetic":
        assert cfg.dataset.data_dir == "/some/where" and cfg.dataset.verify is True


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_resolve(name):
    cfg = make(f"model={name}", "dataset=cifar100")
    # the project's models, and torchvision's ImageNet ResNets (resnet50/101/152)
    assert cfg.model._target_.startswith(("sam.models.", "torchvision.models."))
    assert cfg.model.num_classes == 100


@pytest.mark.parametrize("name", options("optim"))
def test_optim_configs_instantiate(name):
    cfg = make(f"optim={name}", "lr=0.3", "lam=1e-3", "rho=0.2")
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))  # SAM-ON: norm
    opt = build_optimizer(settings_of(cfg), model)
    group = opt.param_groups[0]
    # fidelity=official (the default): lambda is the L2 term of the loss, the base has none
    assert group["lr"] == 0.3 and group["l2"] == 1e-3 and group["weight_decay"] == 0
    assert group["nesterov"] and isinstance(opt, SAM) == (name != "sgd")
    if name != "sgd":
        assert group["rho"] == 0.2


def test_long_form_overrides_shortcut():
    assert make("optim.rho=0.3").optim.rho == 0.3


@pytest.mark.parametrize("name", options("augment"))
def test_augment_configs(name):
    assert make(f"augment={name}").augment.name == name


@pytest.mark.parametrize("name", options("schedule"))
def test_schedule_configs_instantiate(name):
    cfg = make(f"schedule={name}")
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = instantiate(cfg.schedule)(opt, total_steps=100, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_resolve_and_validate(name):
    cfg = make(f"experiment={name}")
    validate(cfg)


@pytest.mark.parametrize("name", [n for n in options("experiment") if n != "demo"])
def test_paper_recipes_state_their_precision_and_train_as_the_official_code(name):
    cfg = make(f"experiment={name}")
    assert cfg.amp == "off" and cfg.fidelity.name == "official"  # fp32, as the official code


@pytest.mark.parametrize("name", options("experiment/_base"))
def test_a_base_the_recipes_share_is_refused_on_its_own(name):
    """experiment/_base holds values the recipes pull in through their defaults; selected
    alone, one must not train (a missing network or epoch count stops it)."""
    with pytest.raises((UserError, OmegaConfBaseException)):
        cfg = make(f"experiment=_base/{name}")
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        validate(cfg)


def test_paper_experiment_uses_paper_rho_per_dataset():
    assert make("experiment=paper_wrn28_10").optim.rho == 0.05
    assert make("experiment=paper_wrn28_10", "dataset=cifar100").optim.rho == 0.1
    assert make("experiment=paper_wrn28_10", "rho=0.2").optim.rho == 0.2


@pytest.mark.parametrize("name", options("experiment"))
def test_every_swept_value_composes_and_validates(name):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"],
                      return_hydra_config=True)
    for key, values in (cfg.hydra.sweeper.params or {}).items():
        for value in str(values).split(","):
            validate(make(f"experiment={name}", f"{key}={value}"))


@pytest.mark.parametrize("name, dataset, lr, lam, rho", [
    ("table1_wrn28_10", "cifar10", 0.1, 5e-4, 0.05),
    ("table1_wrn28_10", "cifar100", 0.1, 5e-4, 0.1),
    ("table1_wrn28_10_1800", "cifar10", 0.05, 1e-3, 0.05),
    ("table1_wrn28_10_1800", "cifar100", 0.05, 1e-3, 0.1),
    ("table1_shakeshake", "cifar10", 0.02, 1e-3, 0.02),
    ("table1_shakeshake", "cifar100", 0.02, 1e-3, 0.05),
    ("table1_pyramidnet", "cifar10", 0.05, 5e-4, 0.05),
    ("table1_pyramidnet", "cifar100", 0.05, 5e-4, 0.2),
    ("table1_pyramidnet_shakedrop", "cifar10", 0.02, 5e-4, 0.05),
    ("table1_pyramidnet_shakedrop", "cifar100", 0.05, 5e-4, 0.05),
])
def test_table1_recipes_use_table6_hyperparameters(name, dataset, lr, lam, rho):
    cfg = make(f"experiment={name}", f"dataset={dataset}", "optim=sam")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.rho) == (lr, lam, rho)
    assert cfg.batch_size == 256 and cfg.optim.nesterov
    # 8 accelerators x 32 (section 3.1): the SGD baseline shares the BatchNorm shards
    assert cfg.m == 32 and make(f"experiment={name}", "optim=sgd").m == 32


def test_rho_search_holds_out_ten_percent():
    assert make("experiment=rho_search").dataset.val_fraction == 0.1


@pytest.mark.parametrize("overrides, words", [
    (["optim.max_grad_norm=-1"], "optim.max_grad_norm=-1"),
    (["optim.momentum=-0.9"], "optim.momentum=-0.9"),
    (["optim.eta=-1"], "optim.eta=-1"),
    (["epochs=2", "schedule.warmup_epochs=10"], "schedule.warmup_epochs=10"),
    (["schedule.warmup_epochs=-1"], "schedule.warmup_epochs=-1"),
    (["schedule.warmup_epochs=abc"], "schedule.warmup_epochs='abc'"),  # strings quoted
    (["schedule=step", "schedule.gamma=-1"], "schedule.gamma=-1"),
    (["schedule=step", "schedule.milestones=[0.3,2.0]"], "schedule.milestones"),
    (["dataset.val_fraction=abc"], "dataset.val_fraction"),
    (["dataset=synthetic", "dataset.train_size=abc"], "dataset.train_size"),
    (["nan_check_every=0"], "nan_check_every=0"),
    (["augment=autoaugment", "augment.num_workers=-1"], "augment.num_workers=-1"),
    (["amp=fp16", "optim.wd_mode=loss"], "optim.wd_mode=loss"),
    (["amp=fp16", "optim.wd_mode=base", "m_impl=vmap"], "m_impl=vmap"),
])
def test_validate_refuses_group_values_that_would_fail_or_mislead(overrides, words):
    """One line naming the setting, before anything runs (not a ValueError mid-run, and
    not a run that trains with a negative or never-reached learning rate)."""
    with pytest.raises(UserError, match=words.replace("[", r"\[")):
        validate(make(*overrides))


def test_synthetic_fallback_keeps_subset_and_validation_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: the default location, where it may fall back
    monkeypatch.delenv("SAM_DATA", raising=False)
    cfg = make("dataset=cifar10", "data_dir=data", "dataset.fallback_synthetic=true",
               "dataset.subset=300", "dataset.val_fraction=0.25")
    splits = splits_of(cfg)
    assert (len(splits.train_x), len(splits.test_x), splits.eval_split) == (225, 75, "val")


# --------------------------------------------------------------------------- fidelity


def test_fidelity_official_is_the_default_and_reaches_every_group():
    """fidelity=official (google-research/sam) by default; its values reach the groups."""
    cfg = make("augment=autoaugment", "model=shakeshake26_2x96d")
    assert cfg.fidelity.name == "official"
    assert (cfg.optim.wd_mode, cfg.optim.max_grad_norm) == ("loss", 5.0)
    assert (cfg.augment.cutout_per_image, cfg.augment.policy) == (False, "official")
    assert cfg.model.style == "official" and cfg.fidelity.true_gradient is True
    sgd = make("optim=sgd")
    assert (sgd.optim.wd_mode, sgd.optim.max_grad_norm) == ("loss", 5.0)


def test_fidelity_pytorch_is_what_runs_before_it_trained():
    """fidelity=pytorch equals the values results.KEYS_ADDED fills into a config recorded
    before the group existed, so such a run resumes with fidelity=pytorch."""
    from sam.results import KEYS_ADDED, comparable_config

    cfg = make("fidelity=pytorch", "augment=cutout")
    assert OmegaConf.to_container(cfg.fidelity) == KEYS_ADDED["fidelity"]
    assert (cfg.optim.wd_mode, cfg.optim.max_grad_norm) == ("base", None)
    assert cfg.augment.cutout_per_image is True and cfg.model.style == "pytorch"
    # an SGD run recorded before: torch.optim.SGD itself, no fidelity, no new keys
    new = OmegaConf.to_container(make("fidelity=pytorch", "optim=sgd"))
    old = {k: v for k, v in new.items() if k != "fidelity"}
    old["optim"] = {k: v for k, v in new["optim"].items()
                    if k not in ("base_optimizer", "wd_mode", "max_grad_norm")}
    old["optim"]["_target_"] = "torch.optim.SGD"
    old["model"] = {k: v for k, v in new["model"].items() if k != "style"}
    assert comparable_config(old) == comparable_config(new)
    official = OmegaConf.to_container(make("optim=sgd"))
    assert comparable_config(old) != comparable_config(official)


@pytest.mark.parametrize("fidelity", ["official", "pytorch"])
def test_sgd_is_a_descent_with_the_fidelity_conventions(fidelity):
    from sam.optim import Descent

    cfg = make(f"fidelity={fidelity}", "optim=sgd")
    opt = build_optimizer(settings_of(cfg), torch.nn.Linear(2, 2))
    assert isinstance(opt, Descent) and not isinstance(opt, SAM)
    assert isinstance(opt.base_optimizer, torch.optim.SGD)
    assert opt.max_grad_norm == (5.0 if fidelity == "official" else None)
    # official: lambda is the L2 term of the loss, so the base SGD has no weight decay
    assert opt.param_groups[0]["weight_decay"] == (0.0 if fidelity == "official" else 5e-4)


# --------------------------------------------------------------------------- SAM variants


def test_variant_configs_build_their_paper_optimizers():
    from sam.optim import GSAM, LookSAM

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    gsam = build_optimizer(settings_of(make("optim=gsam")), model)
    assert isinstance(gsam, GSAM) and gsam.alpha == 0.4
    assert gsam.param_groups[0]["rho_min"] == gsam.param_groups[0]["rho_max"] == 0.05
    looksam = build_optimizer(settings_of(make("optim=looksam")), model)
    assert isinstance(looksam, LookSAM) and (looksam.k, looksam.alpha) == (5, 0.7)
    on = build_optimizer(settings_of(make("optim=sam_on", "rho=0.5")), model)  # BN: rho
    assert [(len(g["params"]), g["rho"]) for g in on.param_groups] == [(2, 0.5), (2, 0.0)]
    random = build_optimizer(settings_of(make("optim.ascent=random", "seed=3")), model)
    assert (random.ascent, random.seed) == ("random", 3)


@pytest.mark.parametrize("name", ["gsam", "looksam"])
def test_gsam_and_looksam_extend_sam_and_their_earlier_runs_resume(name):
    """optim/{gsam,looksam}.yaml take sam.yaml's options; the SAM ablation switches they
    gained stay off, so a run recorded without them compares equal (KEYS_ADDED)."""
    from sam.results import comparable_config

    sam, variant = make().optim, make(f"optim={name}").optim
    shared = set(sam) - {"_target_", "variant"}
    assert shared <= set(variant) and all(variant[k] == sam[k] for k in shared)
    new = OmegaConf.to_container(make(f"optim={name}"))
    old = {**new, "optim": {k: v for k, v in new["optim"].items()
                            if k not in ("ascent_steps", "second_order", "ascent")}}
    assert comparable_config(old) == comparable_config(new)


def test_a_sam_run_recorded_before_the_variants_resumes():
    """KEYS_ADDED fills the variant keys into a config recorded without them."""
    from sam.results import comparable_config

    new = OmegaConf.to_container(make())
    old = {**new, "optim": {k: v for k, v in new["optim"].items() if k not in (
        "variant", "perturb", "ascent_steps", "second_order", "ascent")}}
    assert comparable_config(old) == comparable_config(new)
    ablation = OmegaConf.to_container(make("optim.ascent_steps=3"))
    assert comparable_config(old) != comparable_config(ablation)


@pytest.mark.parametrize("overrides, words", [
    (["optim=looksam", "m=32"], "optim=looksam keeps g_v per process"),
    (["optim=gsam", "m=32", "m_impl=vmap"], "m_impl=loop"),
    (["optim.ascent_steps=2", "optim.second_order=true"], "separate ablations"),
    (["optim.ascent_steps=0"], "optim.ascent_steps=0"),
    (["optim.ascent=sideways"], "optim.ascent='sideways'"),  # strings quoted
    (["optim.perturb=bn"], "optim.perturb='bn'"),
    (["optim.second_order=true", "optim.p=inf"], "optim.p=2"),
])
def test_validate_refuses_variant_combinations_in_one_line(overrides, words):
    with pytest.raises(UserError, match=words) as err:
        validate(make(*overrides))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, words", [
    (["optim=gsam", "optim.alpha=-1"], "optim.alpha=-1"),
    (["optim=gsam", "optim.rho_min=0.5"], "optim.rho_min=0.5"),
    (["optim=looksam", "optim.k=0"], "optim.k=0"),
])
def test_validate_refuses_variant_hyperparameters(overrides, words):
    with pytest.raises(UserError, match=words):
        validate(make(*overrides))


def test_sam_on_without_normalization_layers_is_a_user_error():
    with pytest.raises(UserError, match="no normalization layer"):
        build_optimizer(settings_of(make("optim=sam_on")), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("overrides, label", [
    ([], "sam"), (["optim=gsam"], "gsam"), (["optim=looksam"], "looksam"),
    (["optim=sam_on"], "sam_on"), (["optim.perturb=norm"], "sam_on"),
    (["optim=sam_on", "optim.perturb=no_norm"], "sam_on perturb=no_norm"),
    (["optim=sam_multistep"], "sam ascent_steps=2"),
    (["optim=sam_second_order"], "sam second_order"), (["optim=sam_random"], "sam ascent=random"),
    # a variant's own options off their defaults name a row of their own (an alpha sweep)
    (["optim=looksam", "optim.alpha=0.2"], "looksam alpha=0.2"),
    (["optim=looksam", "optim.k=10"], "looksam k=10"),
    (["optim=gsam", "optim.alpha=0.1"], "gsam alpha=0.1"),
    (["optim=gsam", "optim.rho_min=0.01", "optim.lr_min=0.001"],
     "gsam rho_min=0.01 lr_min=0.001"),
    (["optim=gsam", "optim.lr_min=0.001"], "gsam"),  # lr_min acts only with rho_min
    (["optim.p=inf"], "sam p=inf"), (["optim.adaptive=true"], "sam adaptive"),
    (["optim.adaptive=true", "optim.eta=0.0"], "sam adaptive eta=0.0"),
])
def test_each_variant_has_the_report_name_of_its_docs(overrides, label):
    from sam.optim import variant_label

    assert variant_label(make(*overrides).optim) == label
