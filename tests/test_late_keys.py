"""No encrypted message is lost: one whose room key reaches the bot only after the message is
kept, answered exactly once when the key comes (also across a restart), and named to the
room when it is long in coming. A real Synapse, the real host, SDK and CLI; the key is held
back by the human's own client (tests/support/matrix_human.py), so the bot receives the
real to-device message late, as from a client that shares its key late."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.scripted_model import ScriptedModel
from tests.support.world import World, echo, prompt_messages

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(homeserver, scripted_model: ScriptedModel, tmp_path: Path) -> AsyncIterator[World]:
    w = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = echo
    await w.setup(encrypted=True)
    yield w
    await w.close()


def waiting(world: World) -> list[str]:
    """The event IDs the host keeps waiting for their keys (its database, read-only)."""
    path = Path(world.settings["data_dir"]) / "nanoclaw.db"
    database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in database.execute("SELECT event_id FROM undecrypted")]
    finally:
        database.close()


async def started(world: World, **overrides: object) -> None:
    await world.start_host(**overrides)
    await world.alice.wait_joined(world.main_room, world.bot.user_id)
    await asyncio.sleep(1.0)  # let both sides upload and query device keys
    await world.alice.send(world.main_room, "on time")
    await world.alice.wait_for_replies(world.bot.user_id, world.main_room, timeout=45)


def asked_about(world: World, body: str) -> int:
    """How many of the model's requests carried `body` as the newest message."""
    return sum(prompt_messages(r)[-1]["body"] == body for r in world.model.requests)


async def test_a_message_whose_key_comes_late_is_answered_once_when_it_comes(
    world: World,
) -> None:
    await started(world)
    event_id, release = await world.alice.send_with_late_key(world.main_room, "late hello")
    await world.alice.wait_for(lambda: waiting(world) == [event_id], what="the event kept")
    await asyncio.sleep(2.0)  # several syncs: nothing answers what cannot be read
    assert world.bot_replies() == ["echo: on time"]
    await world.alice.send(world.main_room, "/status")
    status = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=2)
    assert "waiting for their keys: 1 encrypted message(s)" in status[1]["content"]["body"]
    await release()
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=3)
    assert replies[2]["content"]["body"] == "echo: late hello"
    await asyncio.sleep(2.0)
    assert [r for r in world.bot_replies() if r.startswith("echo")] == [
        "echo: on time",
        "echo: late hello",
    ]  # once
    assert asked_about(world, "late hello") == 1 and waiting(world) == []


async def test_the_room_is_told_once_when_keys_are_long_in_coming(world: World) -> None:
    quick = {"matrix": {**world.settings["matrix"], "key_wait_seconds": 10}}
    await started(world, **quick)
    event_id, release = await world.alice.send_with_late_key(world.main_room, "slow key")
    notices = await world.alice.wait_for_replies(
        world.bot.user_id, world.main_room, count=2, timeout=45
    )
    told = notices[1]["content"]
    assert told["msgtype"] == "m.notice", told
    assert world.alice.user_id in told["body"] and "keys have not reached me" in told["body"]
    await asyncio.sleep(3.0)
    assert len(world.alice.messages_from(world.bot.user_id, world.main_room)) == 2  # once
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanoclaw.cli", "doctor", "--config", str(world.config_path(**quick)),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    doctor = (await process.communicate())[0].decode()
    line = next(line for line in doctor.splitlines() if "waiting keys" in line)
    assert line.startswith("FAIL") and "1 encrypted message(s)" in line, doctor
    await release()
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=3)
    assert replies[2]["content"]["body"] == "echo: slow key"
    assert waiting(world) == [], event_id


async def test_a_restart_while_an_event_waits_loses_nothing(world: World) -> None:
    await started(world)
    event_id, release = await world.alice.send_with_late_key(world.main_room, "across restart")
    await world.alice.wait_for(lambda: waiting(world) == [event_id], what="the event kept")
    assert await world.hosts[-1].stop() == 0
    await release()  # the key arrives while the host is down
    await world.start_host()
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=2)
    assert replies[1]["content"]["body"] == "echo: across restart"
    await asyncio.sleep(2.0)
    assert world.bot_replies() == ["echo: on time", "echo: across restart"]
    assert asked_about(world, "across restart") == 1 and waiting(world) == []
