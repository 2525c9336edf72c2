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


def settings_of(cfg: DictConfig):
    """The typed settings sam-train reads from a composed config (``sam.settings``)."""
    from sam.settings import read_settings

    return read_settings(OmegaConf.to_container(cfg, resolve=True))


def splits_of(cfg: DictConfig):
    """``sam.data.load_splits`` on a composed config's dataset settings and seed."""
    from sam.data import load_splits

    s = settings_of(cfg)
    return load_splits(s.dataset, s.seed)


def console_in_process(monkeypatch, capsys, prog: str, main, *args: str) -> tuple[int, str, str]:
    """A console script's entry point ``main`` in this process (no interpreter start):
    exit status, stdout, stderr."""
    import sys

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # the guard sets both; restored afterwards
    monkeypatch.setenv("SAM_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", [prog, *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# A two-epoch ResNet-8 run on synthetic data (seconds on one core), for end-to-end tests.
TINY_RUN = ["dataset=synthetic", "model=resnet20", "model.depth=8", "batch_size=16",
            "dataset.train_size=128", "dataset.test_size=32", "eval_batch_size=32",
            "epochs=2", "deterministic=true", "device=cpu", "progress=false"]


def signal_after_steps(steps: int, signum: int):
    """sam.train.loop's ``sam_step``, wrapped to send ``signum`` to this process right after
    the ``steps``-th call (set it as ``loop.sam_step``)."""
    import os

    from sam.train import loop

    real, calls = loop.sam_step, []

    def step_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == steps:
            os.kill(os.getpid(), signum)
        return out

    return step_then_signal


def preempt_after_steps(monkeypatch, steps: int) -> None:
    """SIGTERM to this process right after the ``steps``-th training step (the run stops
    there with Preempted); ``monkeypatch.undo()`` restores the step."""
    import signal

    from sam.train import loop

    monkeypatch.setattr(loop, "sam_step", signal_after_steps(steps, signal.SIGTERM))
