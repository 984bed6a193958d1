"""One loader for every TOML file the daemon reads: settings, device profiles, scenarios.

Read the file (errors name the file), then validate with a pydantic model (errors name
every key, with the line where the file has one). Profiles and settings used to have four
hand-written validators; a new file kind is now a pydantic model and one call.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edge import redact
from edge.errors import ConfigError

__all__ = ["config_error", "load_model", "parse_model", "read_toml"]

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's data; a missing, unreadable or invalid file raises ConfigError naming it."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("file not found", file=file) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from exc


def config_error(
    exc: ValidationError, file: str, where: Callable[[tuple[int | str, ...], str], str] | None = None
) -> ConfigError:
    """Turn pydantic's errors into one ConfigError listing every key and reason (secrets redacted).

    `where(loc, file)` names the source of a key when it is not simply the file (settings: an
    environment variable).
    """
    lines = []
    first_key = ""
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        first_key = first_key or key
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        source = where(loc, file) if where is not None else file
        lines.append(redact.redact_text(f"{source}: {key}: {msg}"))
    error = ConfigError("\n".join(lines))
    error.key, error.file, error.lines = first_key, file, lines
    return error


def parse_model(model: type[M], data: Mapping[str, Any], file: str = "<memory>") -> M:
    """Validate already-parsed data (tests build variants this way); errors name key and file."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise config_error(exc, file) from None


def load_model(model: type[M], path: str | Path) -> M:
    """Read and validate a TOML file into `model`."""
    return parse_model(model, read_toml(path), str(path))
