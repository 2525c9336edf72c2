"""Shared pieces of the sharpness instruments: the callable types and two argument checks.

Private to :mod:`sam.sharpness`; imports only torch and :mod:`sam.errors`.
"""

from collections.abc import Callable

from torch import Tensor, nn

from sam.errors import UserError

LossFn = Callable[[Tensor, Tensor], Tensor]
Hvp = Callable[[Tensor], Tensor]
Batch = tuple[Tensor, Tensor]


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters: set requires_grad=True on some")
    return params


def check_positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{name} must be a positive integer, got {value}: pass {name} >= 1")
