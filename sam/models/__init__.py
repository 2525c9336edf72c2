"""CIFAR architectures and a name -> constructor registry. Models know nothing of SAM.

Every constructor takes ``num_classes`` plus optional keyword overrides, e.g.
``build_model("wrn28_10", 100, dropout=0.3)``. WideResNet, ShakeShake and PyramidNet take
``style`` (one of ``STYLES``): "pytorch" (default) or "official" (google-research/sam's
architectures exactly). ``with true_gradient(model):`` makes Shake-Shake and ShakeDrop
backpropagate through their forward gate, as the official SAM ascent pass does.
"""

from collections.abc import Callable
from functools import partial

from torch import nn

from sam.errors import UserError
from sam.models.common import STYLES
from sam.models.pyramidnet import PyramidNet
from sam.models.resnet import CifarResNet, ResNet18
from sam.models.shake import ShakeModule, true_gradient
from sam.models.shakeshake import ShakeShake
from sam.models.wrn import WideResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "wrn28_10": partial(WideResNet, depth=28, widen_factor=10),
    "wrn16_8": partial(WideResNet, depth=16, widen_factor=8),
    "resnet18": ResNet18,
    "resnet20": partial(CifarResNet, depth=20),
    "resnet32": partial(CifarResNet, depth=32),
    "shakeshake26_2x96d": partial(ShakeShake, depth=26, base_width=96),
    "pyramidnet272": partial(PyramidNet, depth=272, alpha=200, bottleneck=True),
    "pyramidnet272_shakedrop": partial(
        PyramidNet, depth=272, alpha=200, bottleneck=True, shakedrop=True
    ),
}


def build_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes.

    Raises ``UserError`` for an unknown name.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
    "MODELS",
    "CifarResNet",
    "PyramidNet",
    "STYLES",
    "ResNet18",
    "ShakeModule",
    "ShakeShake",
    "WideResNet",
    "build_model",
    "true_gradient",
]
