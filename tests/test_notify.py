"""sd_notify, received on a real datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nanoclaw.host.notify import Notifier
from tests.support.scripted_model import ScriptedModel
from tests.support.world import World, echo


def parse(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def receive(sock: socket.socket, timeout: float = 10.0) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    return parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout))


async def receive_until(
    sock: socket.socket, done: Callable[[dict[str, str]], bool], timeout: float = 30.0
) -> list[dict[str, str]]:
    """Every message up to and including the first that is `done`."""
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not seen or not done(seen[-1]):
        seen.append(await receive(sock, deadline - time.monotonic()))
    return seen


def test_abstract_and_path_sockets_and_nothing_outside_systemd(tmp_path: Path) -> None:
    name = "nanoclaw-test-" + uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        Notifier({"NOTIFY_SOCKET": "@" + name}).send(READY="1", STATUS="a b")
        assert parse(abstract.recv(4096)) == {"READY": "1", "STATUS": "a b"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as path:
        path.bind(str(tmp_path / "n"))
        Notifier({"NOTIFY_SOCKET": str(tmp_path / "n")}).send(STOPPING="1")
        assert parse(path.recv(4096)) == {"STOPPING": "1"}
    outside = Notifier({})
    assert not outside.enabled
    outside.send(READY="1")  # no socket: nothing sent, nothing raised


def test_the_watchdog_is_for_the_process_systemd_named() -> None:
    ours = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(ours).watchdog_seconds == 4.0
    assert Notifier({**ours, "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_seconds == 4.0
    assert Notifier({}).watchdog_seconds is None


async def test_heartbeat_pings_at_half_the_watchdog_and_sends_status_on_change(
    systemd: socket.socket,
) -> None:
    env = {"NOTIFY_SOCKET": systemd.getsockname(), "WATCHDOG_USEC": "200000"}
    statuses = iter(["one", "one", "two"])
    last = ["two"]

    def status() -> str:
        return next(statuses, last[0])

    task = asyncio.create_task(Notifier(env).heartbeat(status))
    try:
        started = time.monotonic()
        messages = [await receive(systemd) for _ in range(5)]
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
    assert all(m["WATCHDOG"] == "1" for m in messages)
    assert [m.get("STATUS") for m in messages] == ["one", None, "two", None, None]
    assert 0.35 < elapsed < 1.5, "every 100 ms"


@pytest.mark.integration
async def test_the_host_tells_systemd_ready_status_watchdog_and_stopping(
    homeserver, scripted_model: ScriptedModel, tmp_path: Path, systemd: socket.socket
) -> None:
    scripted_model.script = echo
    world = World(homeserver, scripted_model, tmp_path)
    try:
        await world.setup()
        # Pets (with the status) every 100 ms: often enough to see a run of a warm CLI.
        env = {"NOTIFY_SOCKET": systemd.getsockname(), "WATCHDOG_USEC": "200000"}
        host = await world.start_host(env=env)
        before = await receive_until(systemd, lambda m: "READY" in m)
        assert all("STOPPING" not in m for m in before)
        assert before[-1]["STATUS"] == "1 groups; runs: 0 running, 0 waiting; warm sessions: 0"
        started = time.monotonic()
        pings = [await receive(systemd) for _ in range(3)]
        assert all(m["WATCHDOG"] == "1" for m in pings)
        assert time.monotonic() - started < 1.0, "every 100 ms"

        await world.alice.send(world.main_room, "a private message body")
        await world.alice.wait_for_replies(world.bot.user_id, world.main_room)
        # The run (a CLI to start, a model to ask) outlasts the 100 ms between statuses;
        # how soon the CLI counts as warm within it is the CLI's business.
        done = "1 groups; runs: 0 running, 0 waiting; warm sessions: 1"
        statuses = await receive_until(systemd, lambda m: m.get("STATUS") == done)
        assert any(
            m.get("STATUS", "").startswith("1 groups; runs: 1 running, 0 waiting;")
            for m in statuses
        ), statuses

        assert await host.stop() == 0
        stopping = await receive_until(systemd, lambda m: "STOPPING" in m)
        assert stopping[-1]["STATUS"].startswith("stopping: ")
        assert "a private message body" not in host.log_text(), "no bodies at info level"
    finally:
        await world.close()
