"""The user's own settings file: `$TRAINSUP_CONFIG`, else `$XDG_CONFIG_HOME/trainsup/config.yaml`
(`~/.config/trainsup/config.yaml`). Read when a setting is needed, so edits apply without a
daemon restart. Today it holds `notify:` (the default for jobs without one) and `keep_attempts:`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class UserConfigError(Exception):
    """The config file exists but cannot be read as a YAML mapping; `str()` is one sentence."""


def config_path() -> Path:
    if explicit := os.environ.get("TRAINSUP_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "trainsup" / "config.yaml"


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The settings as a mapping; {} when there is no config file.

    Raises:
        UserConfigError: the file cannot be read, is not YAML, or is not a mapping.
    """
    import yaml

    path = config_path() if path is None else path
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserConfigError(f"cannot read the trainsup config {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserConfigError(f"the trainsup config {path} is not a mapping of settings")
    return data
