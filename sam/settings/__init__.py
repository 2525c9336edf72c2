"""A run's configuration as typed, checked, frozen settings (the schema: ``schema.py``).

``read_settings(config)`` takes the composed config as a plain resolved dict (the CLI and
the runner hold the Hydra config; nothing below them does), checks every value against its
declared type and range, then the settings that depend on one another (``checks.py``), and
returns ``Settings``. A bad value is one ``UserError`` line naming the override.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sam.errors import UserError
from sam.settings.checks import check_settings
from sam.settings.fields import checked_values, read
from sam.settings.schema import (
    TRACKER_SETTINGS,
    AugmentSettings,
    DatasetSettings,
    FidelitySettings,
    LoggerSettings,
    ModelSettings,
    OptimSettings,
    ScheduleSettings,
    Settings,
    SharpnessSettings,
)

# keys of a group that tell hydra.utils.instantiate what to build: the group's spec only
_INSTANTIATE_KEYS = ("_target_", "_partial_", "base_optimizer")


def read_settings(config: Mapping[str, Any]) -> Settings:
    """The checked ``Settings`` of a composed, resolved training config (a plain dict)."""
    names = ("dataset", "augment", "fidelity", "sharpness", "optim", "schedule", "model",
             "logger")
    # the top level first: a shortcut's bad value is named as the user typed it (lr=...)
    top = checked_values(Settings, {k: v for k, v in config.items() if k not in names}, "",
                         extra="ignore")
    settings = Settings(
        dataset=read(DatasetSettings, config["dataset"], "dataset."),
        augment=read(AugmentSettings, config["augment"], "augment."),
        fidelity=read(FidelitySettings, config.get("fidelity") or {}, "fidelity."),
        sharpness=_sharpness(config.get("sharpness") or {}),
        optim=_with_spec(OptimSettings, config["optim"], "optim."),
        schedule=_with_spec(ScheduleSettings, config["schedule"], "schedule."),
        model=ModelSettings(spec=dict(config["model"])),
        logger=_logger(config.get("logger", {"tensorboard": {}})), **top)
    check_settings(settings)
    return settings


def stored_dataset(config: Mapping[str, Any], data_dir: str | None = None) -> DatasetSettings:
    """The checked dataset settings of a run's stored config (its results.json or
    checkpoint), with ``data_dir`` in place of the stored one when given (the data moved),
    and ``download`` always false: a run directory, maybe someone else's, never makes the
    tool fetch data into a folder it names."""
    d = dict(config["dataset"])
    if data_dir is not None and "data_dir" in d:
        d["data_dir"] = data_dir
    d["download"] = False
    return read(DatasetSettings, d, "dataset.")


def _logger(group: Mapping[str, Any] | None) -> LoggerSettings:
    """The chosen trackers (the keys of ``logger``: configs/logger/), each checked."""
    group = group or {}
    for name in group:
        if name not in TRACKER_SETTINGS:
            raise UserError(f"logger.{name}: not a tracker (known: "
                            f"{', '.join(TRACKER_SETTINGS)})")
    return LoggerSettings(**{name: read(TRACKER_SETTINGS[name], group[name] or {},
                                        f"logger.{name}.") for name in group})


def _sharpness(group: Mapping[str, Any]) -> SharpnessSettings:
    """The per-epoch measurement's settings: checked in full only when it is on (every > 0
    or epochs); switched off, its values are left as they are, as long as their types fit."""
    on = read(SharpnessSettings, group, "sharpness.", bounds=False).on
    return read(SharpnessSettings, group, "sharpness.", bounds=on)


def _with_spec(cls: type, group: Mapping[str, Any], prefix: str) -> Any:
    """``cls`` read from ``group`` (its instantiate keys left to ``spec``)."""
    fields = {k: v for k, v in group.items() if k not in _INSTANTIATE_KEYS}
    return read(cls, fields, prefix, spec=dict(group))


__all__ = ["AugmentSettings", "DatasetSettings", "FidelitySettings", "LoggerSettings",
           "ModelSettings", "OptimSettings", "ScheduleSettings", "Settings", "SharpnessSettings",
           "read_settings", "stored_dataset"]
