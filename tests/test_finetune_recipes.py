"""The fine-tuning (Table 3) and ImageNet (Table 2) recipes compose, validate and carry the
values docs/finetune.md "Recipes" verified against the official code and the paper."""

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sam.train import validate

# recipe -> (dataset config, training images of its training split, augment)
FINETUNE = {
    "finetune_cifar10": ("cifar10", 50_000, "autoaugment"),
    "finetune_cifar100": ("cifar100", 50_000, "autoaugment"),
    "finetune_flowers102": ("flowers102", 1_020 + 1_020, "none"),  # train+val
    "finetune_cars": ("stanford_cars", 8_144, "none"),
    "finetune_aircraft": ("fgvc_aircraft", 6_667, "none"),  # trainval
    "finetune_food101": ("food101", 75_750, "none"),
    "finetune_pets": ("oxford_pets", 3_680, "none"),  # trainval
}
# paper C.2 (batch, lr); timm names and sizes of the official checkpoints (docs/finetune.md)
NETWORKS = {"b7": ("tf_efficientnet_b7.ra_in1k", 600, 632, 1024, 0.016),
            "l2": ("tf_efficientnet_l2.ns_jft_in1k_475", 475, 507, 512, 0.008)}


def make(*overrides: str):
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def sweep(name: str) -> dict:
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"],
                      return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("recipe", sorted(FINETUNE))
@pytest.mark.parametrize("optim", ["sgd", "sam"])
def test_finetune_recipe(recipe, network, optim):
    dataset, images, augment = FINETUNE[recipe]
    name, size, resize, batch, lr = NETWORKS[network]
    cfg = make(f"experiment={recipe}", f"finetune_model={network}", f"optim={optim}")
    validate(cfg)
    assert cfg.dataset.name == dataset and cfg.augment.name == augment
    assert cfg.model._target_ == "sam.models.timm_model.timm_model"
    assert (cfg.model.name, cfg.model.img_size, cfg.model.pretrained) == (name, size, "hub")
    assert cfg.model.interpolation == "bicubic" and cfg.model.num_classes == \
        cfg.dataset.num_classes
    if augment == "none":  # the loaders deliver the network's size: no resize on the device
        assert (cfg.dataset.image_size, cfg.dataset.resize) == (size, resize)
        assert cfg.dataset.interpolation == "bicubic"
    assert (cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (batch, lr, 1e-5)
    assert cfg.optim.momentum == 0.9 and cfg.optim.nesterov
    # 5,000 steps: the fewest epochs of floor(N / batch) steps (drop_last) that reach them
    per_epoch = images // batch
    assert per_epoch * cfg.epochs >= 5000 > per_epoch * (cfg.epochs - 1)
    assert cfg.schedule._target_ == "sam.train.cosine_schedule"
    assert cfg.schedule.warmup_epochs == 0
    assert cfg.bn_eval_mode is True and cfg.label_smoothing == 0.0
    assert cfg.wd_exclude_norm_bias is False and cfg.m is None
    assert cfg.optim.max_grad_norm == 5.0 and cfg.optim.wd_mode == "loss"  # official
    assert cfg.amp == "off"
    if optim == "sam":
        assert cfg.optim.rho == 0.05


@pytest.mark.parametrize("recipe", sorted(FINETUNE))
def test_finetune_sweeps_sgd_against_sam(recipe):
    params = sweep(recipe)
    assert params["optim"] == "sgd,sam" and params["seed"] == "0,1,2"


@pytest.mark.parametrize("optim", ["sgd", "sam"])
def test_finetune_imagenet_is_the_readme_command(optim):
    cfg = make("experiment=finetune_imagenet", f"optim={optim}")
    validate(cfg)
    assert cfg.model.name == "tf_efficientnet_l2.ns_jft_in1k_475"
    assert cfg.model.num_classes == 1000 and cfg.dataset.image_size == 475
    assert cfg.model.keep_head is True  # the official keeps the 1000-class head
    assert cfg.dataset.resize == 507 and cfg.dataset.interpolation == "bicubic"
    assert (cfg.epochs, cfg.batch_size, cfg.optim.lr) == (10, 512, 0.1)
    assert cfg.label_smoothing == 0.1 and cfg.optim.max_grad_norm == 1.0
    assert cfg.augment.name == "basic" and cfg.bn_eval_mode is True
    if optim == "sam":
        assert cfg.optim.rho == 0.1


@pytest.mark.parametrize("model", ["resnet50", "resnet101", "resnet152"])
@pytest.mark.parametrize("optim", ["sgd", "sam"])
def test_table2_imagenet_recipe(model, optim):
    cfg = make("experiment=table2_imagenet", f"model={model}", f"optim={optim}")
    validate(cfg)
    assert cfg.dataset.name == "imagenet" and cfg.model.num_classes == 1000
    assert cfg.model._target_ == f"torchvision.models.{model}"
    assert cfg.model.zero_init_residual is True
    assert (cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (4096, 1.0, 1e-4)
    assert cfg.label_smoothing == 0.1 and cfg.epochs == 100
    assert cfg.optim.momentum == 0.9 and cfg.optim.nesterov
    assert cfg.schedule._target_ == "sam.train.cosine_schedule"
    assert cfg.schedule.warmup_epochs == 0
    assert (cfg.dataset.image_size, cfg.dataset.resize) == (224, 256)
    assert cfg.dataset.interpolation == "bicubic"  # dataset_source_imagenet.py resize_bicubic
    assert list(cfg.dataset.crop_scale) == [0.08, 1.0] and cfg.augment.name == "basic"
    assert cfg.optim.max_grad_norm == 5.0 and cfg.optim.wd_mode == "loss"
    assert cfg.wd_exclude_norm_bias is False and cfg.bn_eval_mode is False
    assert cfg.amp == "off" and cfg.m is None
    if optim == "sam":
        assert cfg.optim.rho == 0.05


def test_table2_sweeps_the_papers_grid():
    params = sweep("table2_imagenet")
    assert params == {"model": "resnet50,resnet101,resnet152", "epochs": "100,200,400",
                      "optim": "sgd,sam"}


# torchvision's parameter counts at 1000 classes, and the official stage sizes
@pytest.mark.parametrize("model, stages, params", [
    ("resnet50", [3, 4, 6, 3], 25_557_032),
    ("resnet101", [3, 4, 23, 3], 44_549_160),
    ("resnet152", [3, 8, 36, 3], 60_192_808),
])
def test_resnet_configs_build_the_official_stages(model, stages, params):
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = instantiate(make(f"model={model}", "dataset=cifar10").model)
    assert net.fc.out_features == 10
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == stages
    assert sum(p.numel() for p in net.parameters()) == params - 2048 * 990 - 990
    # the official zero scale of each block's last BatchNorm (resnet.py scale_init zeros)
    assert all(torch.all(b.bn3.weight == 0) for i in range(1, 5)
               for b in getattr(net, f"layer{i}"))
    # ResNet V1.5, as the official bottleneck: the stride sits on the 3x3 convolution
    block = net.layer2[0]
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)
