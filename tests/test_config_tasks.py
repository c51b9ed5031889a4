"""Tasks declared in the config file: validated at start, errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from nanoclaw.host.config import ConfigError, parse_config
from nanoclaw.host.schedule import Schedule


def config(tasks: Any) -> dict[str, Any]:
    return {
        "timezone": "Europe/Berlin",
        "matrix": {
            "homeserver": "http://127.0.0.1:1",
            "user_id": "@bot:localhost",
            "access_token_file": "/run/token",
            "owners": ["@me:localhost"],
        },
        "groups": {
            "main": {"room_id": "!main:localhost", "main": True},
            "family": {"room_id": "!family:localhost"},
        },
        "tasks": tasks,
    }


def test_declared_tasks_of_each_kind() -> None:
    tasks = parse_config(
        config(
            {
                "morning": {"group": "family", "prompt": "weather?", "cron": "0 7 * * *"},
                "plants": {"group": "main", "prompt": "water", "every": "2d", "context": "group"},
                "trip": {"group": "family", "prompt": "pack", "at": "2030-07-01T08:00"},
            }
        )
    ).tasks
    assert [(t.name, t.group, t.schedule, t.context) for t in tasks] == [
        ("morning", "family", Schedule("cron", "0 7 * * *"), "isolated"),
        ("plants", "main", Schedule("interval", "2d"), "group"),
        ("trip", "family", Schedule("once", "2030-07-01T08:00"), "isolated"),
    ]


@pytest.mark.parametrize(
    ("task", "key", "reason"),
    [
        ({"prompt": "p", "cron": "0 7 * * *"}, "tasks.t.group", "is required"),
        ({"group": "work", "prompt": "p", "cron": "0 7 * * *"}, "tasks.t.group", "no group 'work'"),
        ({"group": "main", "cron": "0 7 * * *"}, "tasks.t.prompt", "is required"),
        ({"group": "main", "prompt": "p"}, "tasks.t", "exactly one of cron, every or at"),
        (
            {"group": "main", "prompt": "p", "cron": "0 7 * * *", "every": "1h"},
            "tasks.t",
            "(cron, every are set)",
        ),
        ({"group": "main", "prompt": "p", "cron": "0 25 * * *"}, "tasks.t.cron", "five fields"),
        ({"group": "main", "prompt": "p", "every": "often"}, "tasks.t.every", "not an interval"),
        ({"group": "main", "prompt": "p", "at": "soon"}, "tasks.t.at", "ISO time"),
        (
            {"group": "main", "prompt": "p", "at": "2030-01-01", "context": "x"},
            "tasks.t.context",
            "group or isolated",
        ),
        (
            {"group": "main", "prompt": "p", "at": "2030-01-01", "when": "x"},
            "tasks.t.when",
            "unknown key",
        ),
    ],
)
def test_invalid_tasks_name_the_key(task: dict[str, str], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config({"t": task}))
    assert caught.value.key == key and reason in caught.value.reason


def test_task_names_start_with_a_letter_and_tasks_is_a_table() -> None:
    with pytest.raises(ConfigError, match=r"tasks\.7: task name must match"):
        parse_config(config({"7": {"group": "main", "prompt": "p", "every": "1h"}}))
    with pytest.raises(ConfigError, match="tasks: must be a table of tasks by name, not a list"):
        parse_config(config([{"group": "main"}]))
