"""Reading one validated table of a configuration file: typed getters that reject
unknown keys and wrong types with errors naming the dotted key. Shared by every file the
host reads (the config now, the sandbox policy next), so all errors read alike.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# C0 and C1 controls (NUL and newlines among them) and the Unicode line separators: no
# value that becomes a path, a name or a line of a unit or a log may hold one.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """A bad configuration: `key` is the dotted key (or the file's path), `reason` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


def read_text(path: Path) -> str:
    """A configuration file's text, or a ConfigError keyed by its path."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            str(path), f"cannot read the file: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (bad byte at offset {exc.start})") from None


def parse_json_object(text: str, path: Path) -> dict[str, Any]:
    """A JSON object with no repeated keys, or a ConfigError with the line and column."""
    try:
        data = json.loads(text, object_pairs_hook=json_object)
    except ValueError as exc:  # also duplicate keys, and integers too long to convert
        raise ConfigError(str(path), f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"must hold a JSON object, not {describe(data)}")
    return data


class Table:
    """One table of the file: its dotted key, typed getters, and no keys but the known ones."""

    def __init__(self, value: object, key: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, not {describe(value)}")
        self.key = key
        self.data: Mapping[str, Any] = value
        for name, item in value.items():
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(
                    self.at(name), f"unknown key; {hint}allowed here: {', '.join(allowed)}"
                )
            # TOML has no null; a JSON null is more likely a slip than a wish for the default.
            if item is None:
                raise ConfigError(self.at(name), "must not be null; leave the key out instead")

    def at(self, name: str) -> str:
        return f"{self.key}.{key_part(name)}" if self.key else key_part(name)

    def table(self, name: str, allowed: tuple[str, ...], *, required: bool) -> Table:
        if name not in self.data and required:
            raise ConfigError(self.at(name), f"is required: add a [{self.at(name)}] table")
        return Table(self.data.get(name, {}), self.at(name), allowed)

    def string(self, name: str, what: str, valid: Callable[[str], bool]) -> str | None:
        """The string at `name`, or None when it is absent."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, str) or not valid(value):
            raise ConfigError(self.at(name), f"must be {what}, not {describe(value)}")
        return value

    def require(self, name: str, what: str, valid: Callable[[str], bool]) -> str:
        value = self.string(name, what, valid)
        if value is None:
            raise ConfigError(self.at(name), f"is required: {what}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.data.get(name, default)
        # bool is an int to Python, but `true` is no number in TOML or JSON.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                self.at(name), f"must be an integer from {low} to {high}, not {describe(value)}"
            )
        return value

    def number(self, name: str, default: float) -> float:
        value = self.data.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(
                self.at(name), f"must be a number greater than 0, not {describe(value)}"
            )
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.at(name), f"must be true or false, not {describe(value)}")
        return value


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON silently keeps the last of repeated keys; TOML refuses them, and so do we.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate key {name!r}")
        result[name] = value
    return result


def key_part(name: str) -> str:
    # Quoted as TOML would need it, so an odd key still reads as one part of the path.
    return name if BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"{'integer' if isinstance(value, int) else 'float'} {value}"
    if isinstance(value, str):
        return "string " + json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return "null" if value is None else type(value).__name__
