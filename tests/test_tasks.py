"""Task tools: a group manages only its own tasks, main manages all, refusals are clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nanoclaw.host.config import GroupConfig
from nanoclaw.host.records import TaskSpec
from nanoclaw.host.store import Store
from nanoclaw.host.task_tools import task_mcp_tools
from nanoclaw.host.tasks import TaskRefused, TaskService

GROUPS = {
    folder: GroupConfig(folder, f"!{folder}:localhost", folder == "main", "@Andy", True, (), None)
    for folder in ("main", "family", "work")
}


@pytest.fixture
def service(tmp_path: Path) -> TaskService:
    return TaskService(Store(tmp_path / "db"), ZoneInfo("Europe/Berlin"), GROUPS.get, lambda: None)


async def call(service: TaskService, source: str, name: str, **args: Any) -> tuple[bool, str]:
    """Call a tool as the model does; (is_error, text)."""
    tool = next(t for t in task_mcp_tools(source, service) if t.name == name)
    result = await tool.handler(args)
    return result["is_error"], result["content"][0]["text"]


async def test_the_tool_set(service: TaskService) -> None:
    names = [t.name for t in task_mcp_tools("main", service)]
    assert sorted(names) == [
        "cancel_task",
        "list_tasks",
        "pause_task",
        "resume_task",
        "schedule_task",
        "update_task",
    ]


async def test_a_group_schedules_and_manages_its_own_tasks(service: TaskService) -> None:
    error, text = await call(
        service,
        "family",
        "schedule_task",
        prompt="water the plants",
        schedule_type="cron",
        schedule_value="0 8 * * *",
    )
    assert not error and text.startswith("scheduled task 1: 1 [family] active, cron 0 8 * * *")
    assert "isolated context, next " in text and ":00:00 CE" in text
    for name, expected in (
        ("pause_task", "paused task 1"),
        ("resume_task", "resumed task 1 [family] active"),
        ("cancel_task", "cancelled task 1"),
    ):
        error, text = await call(service, "family", name, task_id="1")
        assert not error and text.startswith(expected)
    assert await call(service, "family", "list_tasks") == (False, "no scheduled tasks")


async def test_a_group_cannot_see_or_touch_another_groups_tasks(service: TaskService) -> None:
    await call(
        service,
        "work",
        "schedule_task",
        prompt="standup",
        schedule_type="interval",
        schedule_value="1d",
    )
    assert await call(service, "family", "list_tasks") == (False, "no scheduled tasks")
    for name in ("pause_task", "resume_task", "cancel_task", "update_task"):
        error, text = await call(service, "family", name, task_id="1")
        assert error and text == "no task '1' in this group; list_tasks shows yours"
    error, text = await call(
        service,
        "family",
        "schedule_task",
        prompt="x",
        schedule_type="interval",
        schedule_value="1h",
        target_group="work",
    )
    assert error and text == "only the main group may schedule tasks for another group"
    assert service.list_text(None).startswith("1 [work] active")


async def test_main_manages_all_and_may_target_any_group(service: TaskService) -> None:
    error, text = await call(
        service,
        "main",
        "schedule_task",
        prompt="hello family",
        schedule_type="once",
        schedule_value="2030-01-01T09:00",
        context_mode="group",
        target_group="family",
    )
    assert not error and "[family] active, once at 2030-01-01T09:00, group context" in text
    assert "next 2030-01-01 09:00:00 CET" in text
    _, listed = await call(service, "main", "list_tasks")
    assert listed.startswith("1 [family]")
    error, text = await call(service, "main", "update_task", task_id="1", prompt="hi again")
    assert not error and text.endswith(": hi again")
    assert await call(service, "main", "pause_task", task_id="1") == (False, "paused task 1")
    error, text = await call(
        service,
        "main",
        "schedule_task",
        prompt="x",
        schedule_type="once",
        schedule_value="2030-01-01T09:00",
        target_group="nobody",
    )
    assert error and text == "no group named 'nobody'"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"schedule_type": "cron", "schedule_value": "every day"}, "not a cron expression"),
        ({"schedule_type": "interval", "schedule_value": "soon"}, "not an interval"),
        ({"schedule_type": "weekly", "schedule_value": "mon"}, "unknown schedule type"),
        ({"schedule_type": "once", "schedule_value": "1h", "context_mode": "x"}, "context_mode"),
        ({"schedule_type": "once", "schedule_value": "2030-01-01", "prompt": " "}, "prompt"),
    ],
)
async def test_invalid_requests_are_refused_with_the_reason(
    service: TaskService, args: dict[str, str], reason: str
) -> None:
    error, text = await call(service, "family", "schedule_task", **{"prompt": "p", **args})
    assert error and reason in text


async def test_state_changes_that_make_no_sense_are_refused(service: TaskService) -> None:
    service.schedule("family", "p", "interval", "1h")
    with pytest.raises(TaskRefused, match="task 1 is active, not paused"):
        service.resume("family", "1")
    service.cancel("family", "1")
    with pytest.raises(TaskRefused, match="already cancelled"):
        service.cancel("family", "1")
    with pytest.raises(TaskRefused, match="schedule a new one"):
        service.update("family", "1", prompt="q")


def test_declared_tasks_are_paused_here_but_changed_only_in_the_config(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.declare_tasks([("daily", TaskSpec("family", "p", "interval", "1h", "isolated"), 1)])
    service = TaskService(store, ZoneInfo("UTC"), GROUPS.get, lambda: None)
    assert service.pause("family", "daily") == "paused task daily"
    for change in (service.cancel, lambda s, t: service.update(s, t, prompt="q")):
        with pytest.raises(TaskRefused, match="declared in the config file; change or remove"):
            change("family", "daily")


def test_the_operator_runs_a_task_now_and_changes_wake_the_scheduler(tmp_path: Path) -> None:
    woken: list[bool] = []
    store = Store(tmp_path / "db")
    service = TaskService(store, ZoneInfo("UTC"), GROUPS.get, lambda: woken.append(True))
    service.schedule("family", "p", "interval", "1h")
    assert service.run_now("1") == "task 1 will run now"
    assert store.task("1").run_requested is not None  # type: ignore[union-attr]
    assert len(woken) == 2
    with pytest.raises(TaskRefused, match=r"no task '7'$"):
        service.pause(None, "7")
