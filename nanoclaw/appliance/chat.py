"""`nanoclaw chat [GROUP]`: a small terminal Matrix client, logged in as the appliance's owner.

Each line read from stdin is sent to the group's room (the main room unless a group is
named); every message from someone else in that room is printed to stdout as it arrives,
as `name: body`. Rooms may be encrypted: the client keeps its own crypto store in
`DATA/chat` (matrix-nio with vodozemac) and, like the bot, trusts the members' devices on
first use. Status lines go to stderr, so stdout is the conversation only.

At the end of input (Ctrl-D, or the end of a pipe) it waits, up to `--wait` seconds, for
the answer to the last line: until someone has written after it and stopped typing. So
`printf 'hello\\n' | nanoclaw chat` prints the agent's reply and exits, 0 when an answer
came, 1 when none did.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import threading
import time
from pathlib import Path

from aiohttp import ClientError
from nio import (
    AsyncClient,
    AsyncClientConfig,
    MegolmEvent,
    RoomMessageNotice,
    RoomMessageText,
    RoomSendError,
    SyncError,
    SyncResponse,
    TypingNoticeEvent,
)

from nanoclaw.appliance.machine import ApplianceError
from nanoclaw.appliance.quickstart import QuickstartState, load_state
from nanoclaw.host.matrix_channel import maintain_keys

QUIET_SECONDS = 1.0  # after an answer, so that one in several messages is read whole


def status(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Chat:
    def __init__(self, state: QuickstartState, room_id: str, store: Path) -> None:
        store.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = state.owner
        self.room_id = room_id
        self.client = AsyncClient(
            state.homeserver,
            owner.user_id,
            device_id=owner.device_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, max_limit_exceeded=0, max_timeouts=2),
        )
        self.client.restore_login(owner.user_id, owner.device_id, owner.access_token)
        self.last_sent = 0.0  # monotonic times
        self.last_answer = 0.0
        self.typing: set[str] = set()

    async def connect(self) -> None:
        # Synapse answers an identical sync request from a cache for a while, so a second
        # chat within minutes would get the first one's stale token and show old messages
        # as new. The timeout is part of the cache's key and an initial sync never waits:
        # a timeout of its own makes the request new.
        try:
            response = await self.client.sync(timeout=secrets.randbelow(10**9) + 1, full_state=True)
        except (TimeoutError, OSError, ClientError) as err:
            raise ApplianceError(
                f"the homeserver {self.client.homeserver} does not answer "
                f"({err or type(err).__name__}): is the appliance up (`scripts/up`)?"
            ) from None
        if isinstance(response, SyncError):
            raise ApplianceError(f"the homeserver refused the owner's login: {response.message}")
        await maintain_keys(self.client)
        if self.room_id not in self.client.rooms:
            raise ApplianceError(f"the owner is not in room {self.room_id}")

    async def follow(self) -> None:
        """Sync forever, printing what others write in the room."""
        while True:
            try:
                response = await self.client.sync(timeout=30000)
            except (TimeoutError, OSError, ClientError) as err:
                status(f"(the homeserver did not answer: {err or type(err).__name__}; retrying)")
                await asyncio.sleep(1)
                continue
            if isinstance(response, SyncError):
                await asyncio.sleep(1)
                continue
            await maintain_keys(self.client)
            self._show(response)

    def _show(self, response: SyncResponse) -> None:
        info = response.rooms.join.get(self.room_id)
        if info is None:
            return
        room = self.client.rooms.get(self.room_id)
        for event in info.timeline.events:
            if event.sender == self.client.user_id:
                continue
            name = room.user_name(event.sender) if room else None
            name = name or event.sender
            if isinstance(event, RoomMessageText | RoomMessageNotice):
                print(f"{name}: {event.body}", flush=True)
                self.last_answer = time.monotonic()
            elif isinstance(event, MegolmEvent):
                status(f"(a message from {name} could not be decrypted yet)")
        for ephemeral in info.ephemeral:
            if isinstance(ephemeral, TypingNoticeEvent):
                self.typing = set(ephemeral.users) - {self.client.user_id}

    async def send(self, text: str) -> None:
        response = await self.client.room_send(
            self.room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": text},
            ignore_unverified_devices=True,
        )
        if isinstance(response, RoomSendError):
            raise ApplianceError(f"could not send: {response.message}")
        self.last_sent = time.monotonic()

    def answered(self) -> bool:
        now = time.monotonic()
        return (
            self.last_answer > self.last_sent
            and not self.typing
            and now - self.last_answer >= QUIET_SECONDS
        )


def _read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """stdin, a line at a time, from a thread of its own (a terminal, pipe or file alike);
    a daemon, so a pending read never holds up the exit."""

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="stdin", daemon=True).start()


async def chat(data: Path, group: str, wait: float) -> int:
    state = load_state(data)
    room_id = state.rooms.get(group)
    if room_id is None:
        raise ApplianceError(f"no group {group!r}; the groups are: {', '.join(state.rooms)}")
    session = Chat(state, room_id, data / "chat")
    try:
        await session.connect()
        following = asyncio.create_task(session.follow())
        status(
            f"{state.owner.user_id} in {group} ({room_id}) on {state.homeserver}. "
            "Type a message and Enter; Ctrl-D ends."
        )
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _read_lines(asyncio.get_running_loop(), lines)
        while (line := await lines.get()) is not None:
            if line.strip():
                await session.send(line)
        if not session.last_sent:
            following.cancel()
            return 0
        deadline = time.monotonic() + wait
        while not session.answered():
            if time.monotonic() > deadline or following.done():
                status(f"(no answer within {wait:.0f} s)")
                following.cancel()
                return 1
            await asyncio.sleep(0.1)
        following.cancel()
        return 0
    finally:
        await session.client.close()
