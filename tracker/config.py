"""Build the app's configuration: defaults, then environment, then overrides."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from tracker.errors import ConfigError
from tracker.settings import DEFAULTS, SETTINGS


def _coerce(name: str, raw: str, default: Any) -> Any:
    """Turn an environment string into the type of the setting's default."""
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError as e:
            raise ConfigError(
                f"{name}={raw!r} is not a whole number; set it to e.g. {default}"
            ) from e
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError as e:
            raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. {default}") from e
    return raw


def _dev_secret_key(instance_path: Path) -> str:
    """Return the development secret kept in the instance folder, creating it once."""
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def load(instance_path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the settings, from defaults, the environment and `overrides` in that order."""
    values = dict(DEFAULTS)
    for setting in SETTINGS:
        raw = os.environ.get(setting.name)
        if raw is not None and raw != "":
            values[setting.name] = _coerce(setting.name, raw, setting.default)
    values.update(overrides or {})

    if not values["DATABASE_URL"]:
        values["DATABASE_URL"] = f"sqlite:///{instance_path / 'closedloop.db'}"
    if not values["SECRET_KEY"]:
        if values["ENV"] == "production":
            raise ConfigError(
                "SECRET_KEY is required when ENV=production; "
                "set it to a long random string, e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'`"
            )
        values["SECRET_KEY"] = _dev_secret_key(instance_path)
    values["BASE_URL"] = values["BASE_URL"].rstrip("/")
    return values
