"""The JSON tables of the policy file, read with their dotted keys: the generic part of
nanoclaw.broker.policy_file (objects whose keys are known, lists, strings, paths, and the
"$comment" allowed in every object)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nanoclaw.broker.config_reader import ConfigError, Table, describe
from nanoclaw.broker.policy import absolute_path

COMMENT = "$comment"


def read_table(value: object, key: str, allowed: tuple[str, ...]) -> Table:
    table = Table(value, key, (*allowed, COMMENT))
    if COMMENT in table.data:
        comment(table.data[COMMENT], table.at(COMMENT))
    return table


def comment(value: object, key: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string (it is ignored), not {describe(value)}")


def listed(table: Table, name: str) -> list[Any]:
    values = table.data.get(name, [])
    if not isinstance(values, list):
        raise ConfigError(table.at(name), f"must be a list, not {describe(values)}")
    return values


def strings(table: Table, name: str, what: str, valid: Callable[[str], bool]) -> tuple[str, ...]:
    result: list[str] = []
    for index, value in enumerate(listed(table, name)):
        if not isinstance(value, str) or not valid(value):
            raise ConfigError(
                f"{table.at(name)}[{index}]", f"must be {what}, not {describe(value)}"
            )
        result.append(value)
    return tuple(result)


def paths(table: Table, name: str) -> tuple[str, ...]:
    paths: list[str] = []
    for index, value in enumerate(listed(table, name)):
        key = f"{table.at(name)}[{index}]"
        path = absolute_path(value, key)
        if path in paths:
            raise ConfigError(key, f"{path} is listed twice (also at [{paths.index(path)}])")
        paths.append(path)
    return tuple(paths)
