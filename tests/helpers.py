"""Helpers several test files share: a resolved sam-train config, a free TCP port, the
keys of a YAML config, and a stub `srun` for the SLURM launcher."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf


def compose_train(*overrides: str) -> DictConfig:
    """sam-train's config with ``overrides``, composed by Hydra's API and resolved."""
    with initialize_config_module(config_module="sam.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_keys(node: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a config's leaves ("a.b"), without its hydra and defaults."""
    out = []
    for key, value in node.items():
        if key in ("hydra", "defaults"):
            continue
        out += config_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return out


def stub_srun(folder: Path, monkeypatch) -> None:
    """An `srun` that does nothing, first on PATH (submitit checks that it exists)."""
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
