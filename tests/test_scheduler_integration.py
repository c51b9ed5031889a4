"""Scheduled tasks end to end: Synapse, the host process, the SDK's CLI, a scripted model."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.scripted_model import ModelRequest, ToolCall
from tests.support.world import World, echo, prompt_messages

pytestmark = pytest.mark.integration


def task_of(request: ModelRequest) -> str | None:
    """The text of the scheduled task in the newest prompt, if it is a task's run."""
    found = re.search(
        r"<scheduled-task[^>]*>\n(.*?)\n</scheduled-task>", request.last_user_text, re.S
    )
    return found[1] if found else None


def runs(world: World) -> list[tuple[str, int, str]]:
    db = sqlite3.connect(Path(world.settings["data_dir"]) / "nanoclaw.db")
    try:
        return db.execute("SELECT task_id, slot, status FROM task_runs ORDER BY id").fetchall()
    finally:
        db.close()


async def test_a_task_scheduled_by_the_agent_posts_its_result_in_the_room(world: World) -> None:
    due = datetime.now(UTC) + timedelta(seconds=4)

    def script(request: ModelRequest) -> str | ToolCall:
        if task_of(request):
            return "task result: " + task_of(request)  # type: ignore[operator]
        if request.tool_results:
            return "ok: " + request.tool_results[-1]["content"]
        return ToolCall(
            "mcp__nanoclaw__schedule_task",
            {
                "prompt": "say the plants need water",
                "schedule_type": "once",
                "schedule_value": due.isoformat(),
            },
        )

    await world.setup()
    world.model.script = script
    await world.start_host()
    await world.alice.send(world.main_room, "remind me in a few seconds")
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room)
    assert replies[0]["content"]["body"].startswith(
        "ok: scheduled task 1: 1 [main] active, once at"
    )
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=2)
    assert replies[1]["content"]["body"] == "task result: say the plants need water"
    ((task_id, slot, status),) = runs(world)
    assert (task_id, status) == ("1", "ok")
    assert slot == round(due.timestamp() * 1000)
    task_requests = [r for r in world.model.requests if task_of(r)]
    assert not prompt_messages(task_requests[0]), "an isolated run sees the task, not the chat"


async def test_a_declared_task_runs_in_its_groups_session(world: World) -> None:
    await world.setup()
    world.model.script = lambda r: f"ran: {task_of(r)}" if task_of(r) else echo(r)
    host = await world.start_host()
    await world.alice.send(world.main_room, "the secret word is kiwi")
    await world.alice.wait_for_replies(world.bot.user_id, world.main_room)
    await host.stop()
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    tasks = {"recap": {"group": "main", "prompt": "recap", "at": at, "context": "group"}}
    await world.start_host(tasks=tasks)
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=2)
    assert replies[1]["content"]["body"] == "ran: recap"
    request = next(r for r in world.model.requests if task_of(r))
    assert "kiwi" in request.all_text, "context group resumes the group's session"
    host = world.hosts[-1]
    await host.stop()
    await world.start_host(tasks=tasks)  # the same declaration: not a new task
    await asyncio.sleep(1.5)
    assert [r[0] for r in runs(world)] == ["recap"]
    assert len(world.bot_replies()) == 2


async def test_a_host_killed_in_the_middle_of_a_run_does_not_run_that_slot_again(
    world: World,
) -> None:
    started, release = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()

    async def script(request: ModelRequest) -> str:
        if task_of(request):
            loop.call_soon_threadsafe(started.set)
            await asyncio.to_thread(release.wait, 60)
            return "finished late"
        return echo(request)

    await world.setup()
    world.model.script = script
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    tasks = {"report": {"group": "main", "prompt": "write the report", "at": at}}
    host = await world.start_host(tasks=tasks)
    await asyncio.wait_for(started.wait(), 30)
    await host.kill()  # SIGKILL while the agent works on the task
    assert runs(world) == [("report", runs(world)[0][1], "running")]

    await world.start_host(tasks=tasks)
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room)
    assert replies[0]["content"]["body"].startswith(
        "⚠️ Scheduled task report was interrupted by a restart"
    )
    release.set()
    await asyncio.sleep(2)
    assert [r[2] for r in runs(world)] == ["interrupted"], "one run for the slot, none after"
    assert sum(1 for r in world.model.requests if task_of(r)) == 1
    assert world.bot_replies() == [replies[0]["content"]["body"]]
    await world.alice.send(world.main_room, "still there?")
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=2)
    assert replies[1]["content"]["body"] == "echo: still there?"
