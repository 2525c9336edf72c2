"""What a stored config may turn into: the allowlist of the project's own ``_target_``s.

A run's config stored in its ``results.json`` or checkpoint is someone else's input (a
shared run directory): ``hydra.utils.instantiate`` on it would call whatever it names. A
stored node is turned into objects only through :func:`instantiate_stored`, which takes it
as the plain data sam-train wrote (an interpolation left in it is refused), refuses
(UserError, before any call) every ``_target_`` that is not one of the project's own for
that config group (configs/model, configs/optim, configs/schedule; tests/test_security.py
fails when a config names one missing here), and for a model drops the sources of
pretrained weights (the run's checkpoint supplies them): nothing is downloaded or read for
it. A config composed from the user's own command line is the user's and is instantiated
as it is (sam-train).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from hydra.utils import instantiate

from sam.errors import UserError

TARGETS: dict[str, frozenset[str]] = {
    "model": frozenset({
        "sam.models.pyramidnet.PyramidNet",
        "sam.models.resnet.CifarResNet",
        "sam.models.resnet.ResNet18",
        "sam.models.shakeshake.ShakeShake",
        "sam.models.wrn.WideResNet",
        "sam.models.timm_model.timm_model",  # timm's create_model, through the wrapper
        "torchvision.models.resnet50",
        "torchvision.models.resnet101",
        "torchvision.models.resnet152",
    }),
    "optim": frozenset({
        "sam.optim.SAM", "sam.optim.GSAM", "sam.optim.LookSAM", "sam.optim.Descent",
        "torch.optim.SGD",  # optim=sgd before sam.optim.Descent (sam.results.LEGACY_SGD)
    }),
    "schedule": frozenset({"sam.train.cosine_schedule", "sam.train.step_schedule"}),
}
# base_optimizer: {_target_: hydra.utils.get_class, path: torch.optim.<an Optimizer>}
GET_CLASS = "hydra.utils.get_class"
NESTED: dict[str, frozenset[str]] = {"optim": frozenset({GET_CLASS})}
# a model's pretrained weights, replaced by the checkpoint's: timm's and torchvision's
# arguments that would download or read them, and the value that needs neither
WEIGHT_SOURCES = {"pretrained": False, "weights": None, "checkpoint_path": None}


def checked_node(root: dict[str, Any], group: str, where: str) -> dict[str, Any]:
    """A copy of the stored config's ``group`` node (``root[group]``, plain resolved data as
    results.json holds it), once every ``_target_`` in it, nested ones and those inside
    ``_args_`` too, is one of the project's for ``group``; a model's weight sources are set
    to none. UserError naming ``where`` (the file it came from) otherwise."""
    node = root.get(group) if isinstance(root, dict) else None
    if not isinstance(node, dict):
        raise UserError(f"{where}: its stored config has no {group}: pass the run directory "
                        "sam-train wrote (results.json and checkpoints/)")
    node = copy.deepcopy(node)
    target = node.get("_target_") if isinstance(node, dict) else node
    if not _allowed(target, TARGETS[group]):
        _refuse(where, group, target)
    _check(node, group, where)
    if group == "model":
        node.update({k: v for k, v in WEIGHT_SOURCES.items() if k in node})
    return node


def instantiate_stored(root: dict[str, Any], group: str, where: str) -> Any:
    """``hydra.utils.instantiate`` of the stored config's ``group`` node, after
    :func:`checked_node` accepted it (nothing it names is called before)."""
    return instantiate(checked_node(root, group, where))


def _check(value: Any, group: str, where: str) -> None:
    """Refuse any ``_target_`` in ``value`` that ``group`` may not name, and any string a
    second resolution (inside ``instantiate``) would turn into something else."""
    if isinstance(value, dict):
        if "_target_" in value:
            target = value["_target_"]
            if not _allowed(target, TARGETS[group] | NESTED.get(group, frozenset())):
                _refuse(where, group, target)
            if target == GET_CLASS and not _torch_optimizer(value.get("path")):
                _refuse(where, group, f"{GET_CLASS}(path={value.get('path')!r})")
        for item in value.values():
            _check(item, group, where)
    elif isinstance(value, list):
        for item in value:
            _check(item, group, where)
    elif isinstance(value, str) and "${" in value:
        raise UserError(f"{where}: its stored {group} config holds an interpolation "
                        f"({value[:60]!r}): refused, a stored config is the resolved data "
                        "sam-train wrote; pass the run directory sam-train wrote")


def _allowed(target: Any, names: frozenset[str]) -> bool:
    return isinstance(target, str) and target in names


def _torch_optimizer(path: Any) -> bool:
    """Whether ``path`` is ``torch.optim.<an Optimizer class>`` (looked up, not imported)."""
    if not isinstance(path, str) or not path.startswith("torch.optim."):
        return False
    cls = getattr(torch.optim, path.removeprefix("torch.optim."), None)
    return isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)


def _refuse(where: str, group: str, target: Any) -> None:
    raise UserError(f"{where}: its stored {group} config names {target!r}, not one of this "
                    f"project's {group} targets (configs/{group}): refused, a run directory "
                    "is data and may not name code to run; use a run that sam-train wrote")
