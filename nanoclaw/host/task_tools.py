"""The agent's task tools: schedule_task, list_tasks, pause_task, resume_task, cancel_task,
update_task. Like the host tools, each group's instances are bound to its folder, and
TaskService decides what that group may do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from claude_agent_sdk import SdkMcpTool, tool

from nanoclaw.host.host_tools import refusal_result, tool_result
from nanoclaw.host.tasks import TaskRefused, TaskService

_SCHEDULE_PROPERTIES = {
    "prompt": {
        "type": "string",
        "description": "What to do when the task runs, written as a request to yourself.",
    },
    "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
    "schedule_value": {
        "type": "string",
        "description": "cron: five fields in local time, e.g. '0 8 * * mon-fri'; "
        "interval: '90s', '15m', '2h' or '1d'; once: an ISO time, e.g. '2026-05-01T09:00' "
        "(local time) or with an offset.",
    },
    "context_mode": {
        "type": "string",
        "enum": ["group", "isolated"],
        "description": "group: in this group's conversation; isolated (default): a fresh "
        "session that sees only the prompt and the memory.",
    },
}
_TASK_ID = {"task_id": {"type": "string", "description": "The id list_tasks shows."}}

_SCHEDULE_SCHEMA = {
    "type": "object",
    "properties": {
        **_SCHEDULE_PROPERTIES,
        "target_group": {
            "type": "string",
            "description": "Main group only: the folder of the group the task is for.",
        },
    },
    "required": ["prompt", "schedule_type", "schedule_value"],
}
_UPDATE_SCHEMA = {
    "type": "object",
    "properties": {**_TASK_ID, **_SCHEDULE_PROPERTIES},
    "required": ["task_id"],
}
_ID_SCHEMA = {"type": "object", "properties": _TASK_ID, "required": ["task_id"]}


def _answer(call: Callable[[], str]) -> dict[str, Any]:
    try:
        return tool_result(call())
    except TaskRefused as refusal:
        return refusal_result(str(refusal))


def _text(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    return None if value is None else str(value)


def task_mcp_tools(source: str, tasks: TaskService) -> list[SdkMcpTool[Any]]:
    """The task tools for group `source`."""

    @tool(
        "schedule_task",
        "Schedule a prompt to run later or repeatedly; its answer is posted to the room.",
        _SCHEDULE_SCHEMA,
    )
    async def schedule_task(args: dict[str, Any]) -> dict[str, Any]:
        return _answer(
            lambda: tasks.schedule(
                source,
                str(args.get("prompt", "")),
                str(args.get("schedule_type", "")),
                str(args.get("schedule_value", "")),
                str(args.get("context_mode") or "isolated"),
                _text(args, "target_group"),
            )
        )

    @tool("list_tasks", "List scheduled tasks (the main group sees every group's).", {})
    async def list_tasks(args: dict[str, Any]) -> dict[str, Any]:
        return _answer(lambda: tasks.list_text(source))

    @tool("update_task", "Change a task's prompt, schedule or context mode.", _UPDATE_SCHEMA)
    async def update_task(args: dict[str, Any]) -> dict[str, Any]:
        return _answer(
            lambda: tasks.update(
                source,
                str(args.get("task_id")),
                _text(args, "prompt"),
                _text(args, "schedule_type"),
                _text(args, "schedule_value"),
                _text(args, "context_mode"),
            )
        )

    def by_id(name: str, description: str, action: Callable[[str | None, str], str]) -> Any:
        @tool(name, description, _ID_SCHEMA)
        async def call(args: dict[str, Any]) -> dict[str, Any]:
            return _answer(lambda: action(source, str(args.get("task_id"))))

        return call

    return [
        schedule_task,
        list_tasks,
        update_task,
        by_id("pause_task", "Pause a task until resume_task.", tasks.pause),
        by_id("resume_task", "Resume a paused task from now on.", tasks.resume),
        by_id("cancel_task", "Cancel a task for good.", tasks.cancel),
    ]
