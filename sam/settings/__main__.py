"""``python -m sam.settings``: print docs/configuration.md's "Every setting" tables."""

from sam.settings.doc import settings_tables

print(settings_tables())
