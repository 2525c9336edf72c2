"""Weight initialisation shared by the CIFAR networks."""

from torch import nn


def he_init(model: nn.Module, zero_linear_bias: bool = True) -> None:
    """He-normal (fan_out, ReLU) convolutions, BatchNorm weight 1 and bias 0, and, when
    ``zero_linear_bias``, zero linear biases (linear weights keep PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and zero_linear_bias:
            nn.init.zeros_(m.bias)
