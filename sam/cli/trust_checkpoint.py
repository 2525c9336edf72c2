"""``python -m sam.cli.trust_checkpoint PATH... --i-trust-this-file``: the one opt-in that
loads a checkpoint with Python's full unpickler.

sam-sharpness, sam-landscape and a resume load checkpoints as data only
(``torch.load(weights_only=True)``, sam/results.py) and refuse a file holding pickled
objects, naming this command. Whoever trusts where such a file came from (it runs whatever
code the file carries) converts it once: each PATH is loaded, its contents turned into
plain data (numpy arrays into tensors, numpy numbers into Python's, OmegaConf nodes into
dicts and lists), checked to load as data, and written back in place, atomically. Anything
else in it is named and the file left as it was. docs/runs.md, "Security".
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sam.cli._hydra import guarded
from sam.errors import UserError
from sam.results import atomic_write

PROG = "python -m sam.cli.trust_checkpoint"
FLAG = "--i-trust-this-file"
PLAIN = {str, int, float, bool, bytes, type(None), torch.dtype, torch.device}


def plain(obj: Any, odd: set[str]) -> Any:
    """``obj`` with what the safe loader refuses turned into plain data; the types it cannot
    turn are added to ``odd``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().as_subclass(torch.Tensor)  # nn.Parameter and other subclasses
    if isinstance(obj, DictConfig | ListConfig):
        return plain(OmegaConf.to_container(obj, resolve=False), odd)
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = ((plain(k, odd), plain(v, odd)) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [plain(v, odd) for v in obj]
    if isinstance(obj, tuple):  # torch.Size and named tuples too
        return tuple(plain(v, odd) for v in obj)
    if type(obj) not in PLAIN:
        odd.add(f"{type(obj).__module__}.{type(obj).__qualname__}")
    return obj


def loads_as_data(state: Any) -> bool:
    """Whether ``state`` saved by ``torch.save`` loads back with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def trust(path: Path) -> str:
    """Convert the checkpoint ``path`` in place (see the module docstring); what was done,
    as one line. UserError when it is missing or holds something that is not data."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass the checkpoint file the refusal named")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return f"{path} already loads as data: left as it is"
    except Exception:
        pass
    state = torch.load(path, map_location="cpu", weights_only=False)  # the user's opt-in
    odd: set[str] = set()
    converted = plain(state, odd)
    if odd or not loads_as_data(converted):
        what = ", ".join(sorted(odd)) or "objects the safe loader refuses"
        raise UserError(f"{path} holds {what}, which have no plain-data form: left as it "
                        "was; re-save its tensors yourself (torch.save of a dict of tensors)")
    atomic_write(path, lambda f: torch.save(converted, f), binary=True)
    return f"{path} converted: it now holds only tensors and plain data"


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and convert each checkpoint named; UserError without
    ``--i-trust-this-file``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Re-save checkpoints whose pickled objects the safe loader "
        "refuses as plain data, after loading them with the full unpickler: that runs any "
        "code they carry, so only for files from a source you trust.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument(FLAG, dest="trusted", action="store_true",
                        help="required: you trust these files to run code on this machine")
    args = parser.parse_args(argv)
    if not args.trusted:
        raise UserError(f"loading {args.paths[0]} this way runs whatever code it holds: add "
                        f"{FLAG} if you trust where it came from")
    for path in args.paths:
        print(f"{PROG}: {trust(path)}")


def trust_main() -> None:
    """The command line: one line on stderr and exit status 2 on a refusal."""
    guarded(PROG, lambda: main(sys.argv[1:]))


if __name__ == "__main__":
    trust_main()
