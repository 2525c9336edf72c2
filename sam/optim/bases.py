"""The base optimizers a run may put under SAM (``optim.base``) and the options of each.

SAM only changes where the gradient is taken; the step itself is the base optimizer's
(sam.py). The paper's is SGD with Nesterov momentum; Adam and AdamW are torch's:

    sgd    buf <- mu buf + g;  w <- w - lr (g + mu buf)  (nesterov; w - lr buf without)
    adam   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
           w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    adamw  w <- w (1 - lr lambda), then adam's step with no weight decay in g

with g the descent gradient (SAM's: taken at w + eps). Weight decay is the descent
convention's (descent.py): ``wd_mode="base"`` gives lambda to the base optimizer (SGD and
Adam add lambda w to g, AdamW decays w decoupled as above); ``wd_mode="loss"`` puts
lambda/2 ||w||^2 in the loss and runs the base optimizer with weight_decay 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# name -> (torch class, the options of the config that it takes)
BASES: dict[str, tuple[type[torch.optim.Optimizer], tuple[str, ...]]] = {
    "sgd": (torch.optim.SGD, ("momentum", "nesterov")),
    "adam": (torch.optim.Adam, ("betas", "eps")),
    "adamw": (torch.optim.AdamW, ("betas", "eps")),
}
# every base's own options: what a config holds for whichever base it names
BASE_OPTIONS = frozenset(name for _, names in BASES.values() for name in names)


def base_optimizer(
    name: str, options: Mapping[str, Any]
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The torch optimizer class ``name`` (sgd, adam, adamw) stands for and, of
    ``options``, the ones that class takes (``betas`` as a tuple); ValueError for a name
    not in ``BASES``."""
    if name not in BASES:
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {name!r}")
    cls, names = BASES[name]
    own = {k: options[k] for k in names if k in options}
    if "betas" in own:
        own["betas"] = tuple(own["betas"])
    return cls, own
