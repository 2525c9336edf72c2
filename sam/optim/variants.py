"""The SAM variants beside the core, by the names the configs and the report use:
SAM and its ablations (sam.py, ablations.py), GSAM (gsam.py), LookSAM (looksam.py), and
SAM-ON (Mueller et al., NeurIPS 2023: only the normalization layers perturbed), which
is SAM with per-group rho: ``param_groups(model, rho, "norm")``; and the groups without
weight decay on 1-d parameters (``exclude_from_weight_decay``, any optimizer).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from .gsam import GSAM
from .looksam import LookSAM
from .sam import SAM

# normalization layers: BatchNorm/InstanceNorm (_NormBase), LayerNorm, GroupNorm
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
PERTURB = ("all", "norm", "no_norm")


def param_groups(model: nn.Module, rho: float, perturb: str = "all") -> list[dict[str, Any]]:
    """The model's parameters as SAM param groups by what is perturbed:
    "all" (one group), "norm" (SAM-ON: the affine parameters of the normalization
    layers get ``rho``, all others rho 0) or "no_norm" (its ablation: the reverse).
    A group with rho 0 is not perturbed and not in ||g||; every group is still trained.
    Layers are told by type (``NORM_LAYERS``), not by name as SAM-ON's code does
    ('norm'/'bn' in the name), which would miss e.g. a BatchNorm inside nn.Sequential."""
    if perturb not in PERTURB:
        raise ValueError(f"perturb must be one of {', '.join(PERTURB)}, got {perturb!r}")
    every = list(model.parameters())
    if perturb == "all":
        return [{"params": every}]
    norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS)
            for p in m.parameters(recurse=False)}
    inside = [p for p in every if id(p) in norm]
    outside = [p for p in every if id(p) not in norm]
    if not inside:
        raise ValueError(f"perturb={perturb!r}: the model has no normalization layer")
    on, off = (inside, outside) if perturb == "norm" else (outside, inside)
    return [g for g in ({"params": on, "rho": rho}, {"params": off, "rho": 0.0})
            if g["params"]]


def exclude_from_weight_decay(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups with their 1-d parameters (ndim <= 1: normalization scales and shifts,
    biases) split off into groups of their own with ``weight_decay`` 0, as the official
    code's ``no_weight_decay_on_bn`` (its L2 term sums ||w||^2 over ndim > 1 only). The
    other keys of a group (its ``rho``) go with both halves; empty halves are dropped."""
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        decayed = {**group, "params": [p for p in params if p.ndim > 1]}
        free = {**group, "params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}
        out.extend(g for g in (decayed, free) if g["params"])
    return out


def variant_label(optim: Mapping[str, Any]) -> str:
    """The name a run's SAM variant goes by in the report: the optim group's ``variant``
    (sam, gsam, looksam, sam_on), plus any ablation that is on and any of the variant's
    own options off its default, so that runs differing in one get rows of their own:
    e.g. "sam ascent_steps=3", "sam second_order", "sam ascent=random",
    "sam perturb=no_norm", "looksam alpha=0.2", "gsam rho_min=0.01", "sam p=inf",
    "sam adaptive" (ASAM), "sam base=adamw" (a base optimizer other than SGD)."""
    label = str(optim.get("variant", "sam"))
    perturb = optim.get("perturb", "norm" if label == "sam_on" else "all")
    if label == "sam" and perturb == "norm":
        label = "sam_on"  # optim=sam optim.perturb=norm is optim=sam_on
    if optim.get("ascent_steps", 1) != 1:
        label += f" ascent_steps={optim['ascent_steps']}"
    if optim.get("second_order", False):
        label += " second_order"
    if optim.get("ascent", "gradient") != "gradient":
        label += f" ascent={optim['ascent']}"
    if perturb != ("norm" if label.startswith("sam_on") else "all"):
        label += f" perturb={perturb}"
    for name, default in _OWN_DEFAULTS.get(str(optim.get("variant", "sam")), {}).items():
        if name == "lr_min" and optim.get("rho_min") is None:
            continue  # lr_min only places rho_min on the schedule
        if name in optim and optim[name] != default:
            label += f" {name}={optim[name]}"
    if optim.get("p", 2) != 2:
        label += " p=inf"
    if optim.get("adaptive", False):
        eta = optim.get("eta", _default(SAM, "eta"))
        label += " adaptive" + (f" eta={eta}" if eta != _default(SAM, "eta") else "")
    if optim.get("base", "sgd") != "sgd":
        label += f" base={optim['base']}"
    return label


def _default(cls: type, name: str) -> Any:
    return inspect.signature(cls.__init__).parameters[name].default


# the options of each variant's own rule, with the defaults of its class
_OWN_DEFAULTS = {"gsam": {n: _default(GSAM, n) for n in ("alpha", "rho_min", "lr_min")},
                 "looksam": {n: _default(LookSAM, n) for n in ("k", "alpha")}}
