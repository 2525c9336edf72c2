"""sam: Sharpness-Aware Minimization, its experiment runner and reports."""

from sam.optim import SAM, sam_step

__all__ = ["SAM", "sam_step"]
__version__ = "0.1.0"
