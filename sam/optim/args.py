"""The one argument check the optimizers share: a count (an int, not a bool, >= 1)."""

from __future__ import annotations

from typing import Any


def check_count(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (True is not 1 here), else ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
