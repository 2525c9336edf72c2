"""sam: Sharpness-Aware Minimization, its experiment runner and reports.

The public API is the optimizer: ``from sam import SAM, sam_step`` (see :mod:`sam.optim`).
It is imported on first use, so that the report and the CLI start without torch.
"""

from typing import Any

__all__ = ["SAM", "sam_step"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        import sam.optim

        return getattr(sam.optim, name)
    raise AttributeError(f"module 'sam' has no attribute {name!r}")
