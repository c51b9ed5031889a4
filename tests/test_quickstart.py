"""`nanoclaw up`, as a newcomer runs it: up, talk, stop with Ctrl-C, up again on the same data."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw.homeserver import Account
from tests.support.matrix_human import Human
from tests.support.net import free_port
from tests.support.scripted_model import ScriptedModel
from tests.support.world import echo

STARTED: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
def stop_leftovers() -> Iterator[None]:
    """A failed assertion must not leave `nanoclaw up` (and its Synapse) running."""
    yield
    for process in STARTED:
        if process.returncode is None:
            process.kill()
    STARTED.clear()


async def start_up(
    data: Path, port: int, model: ScriptedModel, log: Path, run: int
) -> asyncio.subprocess.Process:
    env = {
        "ANTHROPIC_API_KEY": "sk-quickstart",
        "ANTHROPIC_BASE_URL": model.url,
        "PATH": "/usr/bin:/bin",
    }
    handle = log.open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nanoclaw.cli",
        "up",
        "--data-dir",
        str(data),
        "--port",
        str(port),
        stdout=handle,
        stderr=handle,
        env=env,
    )
    handle.close()
    STARTED.append(process)
    for _ in range(1200):
        text = log.read_text()
        if text.count("synced; serving") >= run:
            return process
        if process.returncode is not None:
            raise AssertionError(text)
        await asyncio.sleep(0.05)
    raise AssertionError("nanoclaw up did not come up:\n" + log.read_text())


async def test_up_talk_stop_and_up_again(tmp_path: Path) -> None:
    data, port, log = tmp_path / "data", free_port(), tmp_path / "up.log"
    with ScriptedModel(echo) as model:
        process = await start_up(data, port, model, log, run=1)
        state = json.loads((data / "quickstart.json").read_text())
        assert oct((data / "quickstart.json").stat().st_mode & 0o777) == "0o600"
        owner, bot = Account(**state["owner"]), Account(**state["nanoclaw"])
        assert f"log in as   {owner.user_id}  password {owner.password}" in log.read_text()
        human = await Human(f"http://127.0.0.1:{port}", owner).start()
        try:
            await human.wait_joined(state["room_id"], bot.user_id)
            await human.send(state["room_id"], "hello from the quickstart")
            replies = await human.wait_for_replies(bot.user_id, state["room_id"])
            assert replies[0]["content"]["body"] == "echo: hello from the quickstart"
            assert model.requests[-1].headers["x-api-key"] == "sk-quickstart"
        finally:
            await human.close()
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0

        process = await start_up(data, port, model, log, run=2)
        assert json.loads((data / "quickstart.json").read_text()) == state, (
            "accounts and room reused"
        )
        human = await Human(f"http://127.0.0.1:{port}", owner).start()
        try:
            await human.send(state["room_id"], "second run")
            await human.wait_for(
                lambda: any(
                    e["content"]["body"] == "echo: second run"
                    for e in human.messages_from(bot.user_id, state["room_id"])
                ),
                30,
                "the reply after a restart",
            )
        finally:
            await human.close()
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
