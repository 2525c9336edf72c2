"""Declared settings: a dataclass field with its meaning, type and range written once.

``setting(default, doc=..., ge=0)`` declares a field; ``read(cls, mapping, prefix)`` builds
the frozen dataclass ``cls`` from a plain mapping (one config group, already resolved),
refusing a key the group does not declare, a value of the wrong type, a non-finite number
and a value out of range, each with one line that names the override
(``UserError("dataset.subset=0: must be an integer >= 1 or null")``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from sam.errors import UserError

_SPEC = "setting"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field may hold besides its type: bounds, allowed values, and its meaning."""

    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None

    def range_text(self) -> str:
        """The range as the error and the docs state it, e.g. ">= 1", "in [0, 1)"."""
        if self.choices is not None:
            *most, last = [_show(c, quote=False) for c in self.choices]
            return f"{', '.join(most)} or {last}" if most else last
        low = f"[{_num(self.ge)}" if self.ge is not None else (
            f"({_num(self.gt)}" if self.gt is not None else None)
        high = f"{_num(self.le)}]" if self.le is not None else (
            f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""


def setting(default: Any = dataclasses.MISSING, *, doc: str, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field carrying its ``Spec`` (meaning, bounds, allowed values)."""
    spec = Spec(doc, ge, gt, le, lt, choices)
    if isinstance(default, list | dict):
        raise TypeError("use a tuple default, settings are frozen")
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def spec_of(field: dataclasses.Field) -> Spec:
    """The ``Spec`` of a field declared with ``setting``."""
    return field.metadata[_SPEC]


def read(cls: type, mapping: Mapping[str, Any], prefix: str, *, bounds: bool = True,
         **known: Any) -> Any:
    """``cls(**mapping, **known)`` with every value of ``mapping`` checked against its
    field's type and ``Spec`` (a key ``cls`` does not declare is a UserError); with
    ``bounds=False`` the types only (a switched-off feature's settings)."""
    return cls(**checked_values(cls, mapping, prefix, bounds=bounds), **known)


def checked_values(cls: type, mapping: Mapping[str, Any], prefix: str, *,
                   extra: str = "refuse", bounds: bool = True) -> dict[str, Any]:
    """The values of ``mapping`` that ``cls`` declares with ``setting``, each checked
    (lists become tuples). ``extra``: "refuse" (a key ``cls`` does not declare is a
    UserError) or "ignore" (the recipes' own helper keys at the top level)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)
             if _SPEC in f.metadata or dataclasses.is_dataclass(hints[f.name])}
    unknown = [k for k in mapping if k not in names]
    if unknown and extra == "refuse":
        raise UserError(f"{prefix}{unknown[0]}: not a setting of {prefix.rstrip('.')}"
                        f" (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in mapping:
            continue
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(mapping[f.name], Mapping):
            values[f.name] = read(hints[f.name], mapping[f.name], f"{prefix}{f.name}.")
        elif _SPEC in f.metadata:
            spec = spec_of(f) if bounds else Spec(spec_of(f).doc)
            values[f.name] = check_value(f"{prefix}{f.name}", mapping[f.name], hints[f.name],
                                         spec)
    return values


def check_value(name: str, value: Any, kind: Any, spec: Spec) -> Any:
    """``value`` (lists as tuples) if it is a ``kind`` within ``spec``; else UserError."""
    value = _freeze(value)
    if not _is_a(value, kind):
        raise UserError(f"{name}={_show(value)}: must be {_kind_text(kind, spec)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(name, value, kind, spec)
    elif isinstance(value, tuple):
        for v in value:
            if isinstance(v, int | float) and not isinstance(v, bool):
                _check_number(name, v, kind, spec, whole=value)
    elif spec.choices is not None and value is not None and value not in spec.choices:
        raise UserError(f"{name}={_show(value)}: use {spec.range_text()}")
    return value


def _check_number(name: str, v: float, kind: Any, spec: Spec, whole: Any = None) -> None:
    shown = _show(v if whole is None else whole)
    if spec.choices is not None and v not in spec.choices:
        raise UserError(f"{name}={shown}: use {spec.range_text()}")
    if spec.choices is None and not math.isfinite(v):
        raise UserError(f"{name}={shown}: must be a finite number")
    ok = ((spec.ge is None or v >= spec.ge) and (spec.gt is None or v > spec.gt)
          and (spec.le is None or v <= spec.le) and (spec.lt is None or v < spec.lt))
    if not ok:
        raise UserError(f"{name}={shown}: must be {_kind_text(kind, spec)}")


def _is_a(value: Any, kind: Any) -> bool:
    """Whether ``value`` is of the annotation ``kind`` (int is not bool; an int is a
    float; tuple[X, ...] checks each item)."""
    if kind is Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, k) for k in typing.get_args(kind))
    if origin is tuple:
        args = typing.get_args(kind)
        return isinstance(value, tuple) and all(_is_a(v, args[0]) for v in value)
    if origin is dict or kind is dict:
        return isinstance(value, dict)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind_text(kind: Any, spec: Spec) -> str:
    """"an integer >= 1 or null", "a number in [0, 1)", "true or false", ..."""
    args = typing.get_args(kind) if typing.get_origin(kind) in (
        typing.Union, types.UnionType) else (kind,)
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             dict: "a mapping"}
    parts = []
    for a in args:
        if a is type(None):
            continue
        if typing.get_origin(a) is tuple:
            parts.append(f"a list of {words.get(typing.get_args(a)[0], 'values')}")
        else:
            parts.append(words.get(a, getattr(a, "__name__", str(a))))
    text = " or ".join(parts)
    bounds = spec.range_text()
    if bounds and spec.choices is None:
        text += f" {bounds}" if not text.startswith("a list") else f", each {bounds}"
    elif spec.choices is not None:
        text = bounds
    return text + (" or null" if type(None) in args else "")


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show(value: Any, quote: bool = True) -> str:
    """A value as an error line shows it: null, true, [1,2]; a string quoted ('ten')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(_show(v, quote) for v in value) + "]"
    return repr(value) if quote and isinstance(value, str) else str(value)
