"""The user's own settings file: `$TRAINSUP_CONFIG`, else `$XDG_CONFIG_HOME/trainsup/config.yaml`
(`~/.config/trainsup/config.yaml`). Read when a setting is needed, so edits apply without a
daemon restart. Today it holds `notify:` and `standby:` (the defaults for jobs without them)
and `keep_attempts:`."""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

Section = TypeVar("Section")


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


def read_section(key: str, model: type[Section], warn: Callable[..., Any]) -> Section | None:
    """The `key:` section of the config file validated as `model` (a pydantic model); None
    when it is absent, or when the file or the section is broken (said through `warn`)."""
    from pydantic import ValidationError

    path = config_path()
    try:
        section = read_config(path).get(key)
    except UserConfigError as exc:
        warn("cannot use the trainsup config", path=str(path), error=str(exc))
        return None
    if section is None:
        return None
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        warn(f"the {key} section of the trainsup config is not valid", path=str(path), error=str(exc))
        return None
