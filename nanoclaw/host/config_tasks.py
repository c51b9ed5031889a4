"""Tasks declared in the configuration file ([tasks.<name>]): their keys, and how each
becomes a TaskConfig whose name is its id, so a restart finds the same task."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from nanoclaw.broker.config_reader import ConfigError, Table, describe, key_part
from nanoclaw.host.config_values import is_text
from nanoclaw.host.schedule import Schedule, ScheduleError, parse_schedule

_TASK_KEYS = ("group", "prompt", "cron", "every", "at", "context")
_TASK_SCHEDULE_KEYS = {"cron": "cron", "every": "interval", "at": "once"}
_TASK_NAME = r"^[a-z][a-z0-9_-]{0,63}$"


@dataclass(frozen=True)
class TaskConfig:
    """A task declared in the file; its name is its id, so a restart finds it again."""

    name: str
    group: str
    prompt: str
    schedule: Schedule
    context: str


def parse_tasks(top: Table, folders: Sequence[str], tz: ZoneInfo) -> tuple[TaskConfig, ...]:
    """[tasks.<name>]: each for one of `folders`, with exactly one of cron, every, at."""
    tables = top.data.get("tasks", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("tasks", f"must be a table of tasks by name, not {describe(tables)}")
    tasks = []
    for name, data in tables.items():
        key = "tasks." + key_part(name)
        if not re.fullmatch(_TASK_NAME, name):
            raise ConfigError(
                key,
                f"task name must match {_TASK_NAME} (starting with a letter: numbers "
                "are the ids of tasks the agent schedules)",
            )
        table = Table(data, key, _TASK_KEYS)
        group = table.require("group", "the folder of a group in [groups]", bool)
        if group not in folders:
            known = ", ".join(folders) or "none"
            raise ConfigError(table.at("group"), f"no group {group!r} here; groups: {known}")
        kinds = [k for k in _TASK_SCHEDULE_KEYS if k in table.data]
        if len(kinds) != 1:
            raise ConfigError(
                key,
                "set exactly one of cron, every or at "
                + (f"({', '.join(kinds)} are set)" if kinds else "(none is set)"),
            )
        value = table.require(kinds[0], "a string", lambda _: True)
        try:
            schedule = parse_schedule(_TASK_SCHEDULE_KEYS[kinds[0]], value, tz)
        except ScheduleError as exc:
            raise ConfigError(table.at(kinds[0]), str(exc)) from None
        tasks.append(
            TaskConfig(
                name=name,
                group=group,
                prompt=table.require("prompt", "the text the agent gets when it runs", is_text),
                schedule=schedule,
                context=table.string(
                    "context", "group or isolated", ("group", "isolated").__contains__
                )
                or "isolated",
            )
        )
    return tuple(tasks)
