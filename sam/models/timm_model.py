"""Pretrained networks from timm, fine-tuned on a dataset's classes (``model=timm``).

``sam-train model=timm model.name=vit_base_patch16_224 model.pretrained=<weights>`` builds
the timm network ``name`` with a new classifier head for ``num_classes`` and its weights from
``pretrained``: ``false`` (random init), ``hub`` (timm's own download, for machines online)
or a local ``.safetensors`` / ``.pth`` file (the offline path: the backbone from the file, a
head of another shape left randomly initialised). docs/finetune.md, "Models (timm)".

The returned :class:`TimmInput` takes the batches the loaders make (normalized with the
DATASET's mean/std, at the dataset's size) and turns them, on the device and batched, into
what the network was pretrained on (its ``pretrained_cfg``: input size, interpolation,
mean, std)::

    pixels = resize(x * in_std + in_mean) clamped to [0, 1]   (as an 8-bit image resize)
    net((pixels - mean) / std)
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import Tensor, nn

from sam.errors import UserError

log = logging.getLogger("sam.models")

HUB = "hub"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# wrappers whose state dicts a weights file may come in: DDP, timm/other trainers, torch.compile,
# TimmInput itself (a sam-train checkpoint's "model")
PREFIXES = ("module.", "model.", "_orig_mod.", "net.")
SHOWN = 3  # keys named in an error line


class TimmInput(nn.Module):
    """A timm network behind the input conversion of the module docstring.

    ``in_mean``/``in_std`` (the loaders' normalization, saved in checkpoints so that
    sam-sharpness / sam-landscape rebuild the same conversion) undo the dataset's
    normalization; ``size`` and ``mode`` resize (antialiased: PIL's filters, which timm's
    own transforms resize with, on the way down and up); ``mean``/``std`` are the network's.
    A one-channel dataset (Fashion-MNIST) is repeated to the network's three channels.
    """

    def __init__(self, net: nn.Module, size: tuple[int, int], mode: str,
                 mean: Sequence[float], std: Sequence[float],
                 in_mean: Sequence[float], in_std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self.mode = mode
        self.register_buffer("in_mean", _channels(in_mean))
        self.register_buffer("in_std", _channels(in_std))
        self.register_buffer("mean", _channels(mean), persistent=False)
        self.register_buffer("std", _channels(std), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        pixels = x * self.in_std + self.in_mean
        if pixels.shape[1] == 1 < self.mean.shape[1]:
            pixels = pixels.expand(-1, self.mean.shape[1], -1, -1)
        if tuple(pixels.shape[-2:]) != self.size:
            if self.mode == "nearest":
                pixels = F.interpolate(pixels, size=self.size, mode="nearest-exact")
            else:
                pixels = F.interpolate(pixels, size=self.size, mode=self.mode,
                                       align_corners=False, antialias=True).clamp_(0, 1)
        return self.net((pixels - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"


def _channels(values: Sequence[float]) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, -1, 1, 1)


def timm_model(name: str, num_classes: int, pretrained: bool | str = False,
               in_mean: Sequence[float] | None = None, in_std: Sequence[float] | None = None,
               img_size: int | Sequence[int] | None = None, interpolation: str | None = None,
               keep_head: bool = True, **create_kwargs: Any) -> TimmInput:
    """The timm network ``name`` with a ``num_classes`` head, its weights from ``pretrained``
    (False, "hub" or a weights file) but for a head of another shape, which is new and
    random (``keep_head=False``: always), wrapped in :class:`TimmInput`.

    ``in_mean``/``in_std``: the normalization of the batches it will get (sam-train passes
    the loaders'; None: the network's own, i.e. inputs already normalized for it).
    ``img_size`` (int or (h, w)) and ``interpolation`` override the pretrained config's
    input size and resize filter; ``create_kwargs`` go to ``timm.create_model`` (e.g.
    ``drop_path_rate``). A bad name, an unreadable or ill-fitting file: one-line UserError.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserError(f"model.name={name!r} is not a timm model{hint}: pick one of "
                        f"timm.list_models('*{name.split('_')[0]}*')")
    size = _size(img_size)
    source = _source(pretrained)
    net = _create(name, num_classes, source == HUB, size, create_kwargs)
    if source == HUB:
        if not keep_head:  # timm keeps a pretrained head of num_classes
            net.reset_classifier(num_classes)
    elif source is not None:
        load_backbone(net, read_weights(Path(source), name), Path(source), name, keep_head)
    data_cfg = resolve_data_config({}, model=net)
    size = size or tuple(data_cfg["input_size"][-2:])
    mode = interpolation or {"bilinear": "bilinear", "nearest": "nearest"}.get(
        data_cfg.get("interpolation"), "bicubic")  # bicubic also for timm's lanczos/random
    if mode not in INTERPOLATIONS:
        raise UserError(f"model.interpolation={mode!r}: use one of {', '.join(INTERPOLATIONS)}"
                        " or null (the model's)")
    mean, std = data_cfg["mean"], data_cfg["std"]
    log.info("timm %s: weights %s, %d classes; input resized to %dx%d (%s), normalized "
             "with mean %s std %s", name, source or "random", num_classes, *size, mode,
             tuple(mean), tuple(std))
    return TimmInput(net, size, mode, mean, std, mean if in_mean is None else in_mean,
                     std if in_std is None else in_std)


def _size(img_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if img_size is None:
        return None
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise UserError(f"model.img_size={img_size!r}: use a positive int, [height, width] "
                        "or null (the model's pretrained input size)")
    return hw  # type: ignore[return-value]


def _source(pretrained: bool | str | None) -> str | None:
    """None (random init), HUB or the weights file's path."""
    if pretrained in (None, False, "false", "False", ""):
        return None
    if pretrained is True or pretrained in (HUB, "true", "True"):
        return HUB
    if not isinstance(pretrained, str):
        raise UserError(f"model.pretrained={pretrained!r}: use false, hub or the path of a "
                        ".safetensors/.pth weights file")
    return str(Path(pretrained).expanduser())


def _create(name: str, num_classes: int, hub: bool, size: tuple[int, int] | None,
            kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, with ``img_size`` for the nets whose shapes depend on it (ViTs):
    the others (CNNs) refuse the argument and take any size."""
    kwargs = {"num_classes": num_classes, **kwargs}
    try:
        try:
            if size is not None:
                return timm.create_model(name, pretrained=hub, img_size=size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
        return timm.create_model(name, pretrained=hub, **kwargs)
    except TypeError as err:
        raise UserError(f"timm.create_model({name!r}, ...) refused an argument ({_first(err)})"
                        ": remove the extra model.* key") from None
    except Exception as err:
        if not hub:
            raise
        raise UserError(f"model.pretrained=hub: timm could not get the weights of {name!r} "
                        f"({_first(err)}): go online (timm downloads them from the Hugging "
                        f"Face hub into its cache), or {_how(name)}") from None


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _how(name: str) -> str:
    return (f"on a machine online run torch.save(timm.create_model({name!r}, pretrained=True)"
            ".state_dict(), 'weights.pth') and set model.pretrained=<that file>")


# ----------------------------------------------------------------------- local weights files
def read_weights(path: Path, name: str) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (safetensors) or a ``.pth``/``.pt`` file
    (``torch.load(weights_only=True)``; a ``state_dict``/``model`` entry is unwrapped),
    with a wrapper's key prefix (``module.``, ``model.``, ``net.``...) stripped."""
    if not path.is_file():
        raise UserError(f"model.pretrained={path}: no such file: {_how(name)}, or use "
                        "model.pretrained=hub")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # timm's own dependency

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"model.pretrained={path}: not a readable weights file "
                        f"({_first(err)}): {_how(name)}") from None
    for key in ("state_dict", "model"):  # training checkpoints (sam-train's last.pt: model)
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"model.pretrained={path}: holds no state dict of tensors: "
                        f"{_how(name)}")
    state = {k: v for k, v in state.items() if k not in ("in_mean", "in_std")}  # TimmInput's
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_backbone(net: nn.Module, state: dict[str, Tensor], path: Path, name: str,
                  keep_head: bool = True) -> None:
    """Load ``state`` into ``net`` except for a classifier head of another shape (or any,
    ``keep_head=False``), left randomly initialised and said in the log; any other
    missing, unexpected or misshapen tensor is a UserError naming the first few. timm's own
    conversion for the architecture (``checkpoint_filter_fn``: e.g. a ViT's position
    embedding resampled to ``img_size``) is applied first, where it has one."""
    state = _timm_filter(net, state)
    own = net.state_dict()
    heads = _head_names(net)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    dropped = [k for k in state if is_head(k) and not (
        keep_head and k in own and state[k].shape == own[k].shape)]
    missing = [k for k in own if k not in state and not is_head(k)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    misshapen = [k for k in state if k in own and not is_head(k) and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {_keys(unexpected)}")
    if misshapen:
        k = misshapen[0]
        problems.append(f"{k} is {_shape(state[k])} in the file, {_shape(own[k])} in the model"
                        + (f" (+{len(misshapen) - 1} more shapes)" if len(misshapen) > 1 else ""))
    if problems:
        raise UserError(f"model.pretrained={path} does not fit timm model {name!r} "
                        f"({'; '.join(problems)}): {_how(name)}, or use model.pretrained=hub")
    kept = {k: v for k, v in state.items() if k not in dropped}
    net.load_state_dict(kept, strict=False)
    new_head = [k for k in own if is_head(k) and k not in kept]
    log.info("timm %s: %d tensors loaded from %s; head %s randomly initialised%s", name,
             len(kept), path, ", ".join(new_head) or "(none)",
             f" (the file's {_keys(dropped)} left out)" if dropped else "")


def _timm_filter(net: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(dict(state), net)
    except Exception:  # not a format it knows: the check below names what does not fit
        return state


def _head_names(net: nn.Module) -> tuple[str, ...]:
    names = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _keys(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return "keys " + ", ".join(keys[:SHOWN]) + more


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


__all__ = ["HUB", "TimmInput", "load_backbone", "read_weights", "timm_model"]
