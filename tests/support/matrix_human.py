"""A human at a Matrix client, driven by tests: sends messages, watches for the bot's replies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    MegolmEvent,
    ReceiptEvent,
    RoomCreateError,
    RoomMessage,
    RoomSendError,
    ShareGroupSessionResponse,
    SyncError,
    TypingNoticeEvent,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from nanoclaw.appliance.homeserver import Account
from nanoclaw.host.matrix_channel import maintain_keys


class Human:
    def __init__(self, homeserver: str, account: Account, store_dir: Path | None = None) -> None:
        self.account = account
        self.user_id = account.user_id
        config = AsyncClientConfig(
            max_limit_exceeded=0, max_timeouts=2, encryption_enabled=store_dir is not None
        )
        if store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)
        self.client = AsyncClient(
            homeserver,
            account.user_id,
            device_id=account.device_id,
            store_path=str(store_dir or ""),
            config=config,
        )
        self.client.restore_login(account.user_id, account.device_id, account.access_token)
        self.events: list[tuple[str, dict[str, Any]]] = []  # (room_id, event source)
        self.undecryptable = 0
        self.typing_seen: set[tuple[str, str]] = set()  # (room_id, user_id) ever seen typing
        self.receipts: set[tuple[str, str, str]] = set()  # (room_id, event_id, user_id) read
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Human:
        await self._sync_once(timeout=0)
        self._task = asyncio.create_task(self._loop())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()

    async def _loop(self) -> None:
        while True:
            await self._sync_once(timeout=1000)

    async def _sync_once(self, timeout: int) -> None:
        response = await self.client.sync(
            timeout=timeout, full_state=self.client.next_batch is None
        )
        if isinstance(response, SyncError):
            await asyncio.sleep(0.2)
            return
        await maintain_keys(self.client)
        for room_id, info in response.rooms.join.items():
            for ephemeral in info.ephemeral:
                if isinstance(ephemeral, TypingNoticeEvent):
                    self.typing_seen.update((room_id, user) for user in ephemeral.users)
                elif isinstance(ephemeral, ReceiptEvent):
                    self.receipts.update(
                        (room_id, r.event_id, r.user_id) for r in ephemeral.receipts
                    )
            for event in info.timeline.events:
                if isinstance(event, MegolmEvent):
                    self.undecryptable += 1
                elif isinstance(event, RoomMessage):
                    self.events.append((room_id, dict(event.source)))
        for room_id in response.rooms.invite:
            await self.client.join(room_id)

    async def create_room(
        self, invite: list[str], encrypted: bool = False, name: str = "test"
    ) -> str:
        initial_state = []
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        created = await self.client.room_create(
            name=name, invite=invite, initial_state=initial_state
        )
        assert not isinstance(created, RoomCreateError), created
        await self._sync_once(timeout=0)
        return str(created.room_id)

    async def send(self, room_id: str, body: str, **content: Any) -> str:
        response = await self.client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": body, **content},
            ignore_unverified_devices=True,
        )
        assert not isinstance(response, RoomSendError), response
        return str(response.event_id)

    async def send_with_late_key(
        self, room_id: str, body: str
    ) -> tuple[str, Callable[[], Awaitable[None]]]:
        """Send `body` encrypted with a new room key whose to-device messages are held back,
        as a client that shares its key late does; and a coroutine that sends them."""
        client = self.client
        client.invalidate_outbound_session(room_id)  # a key the bot has not seen
        held: list[tuple[Any, ...]] = []
        real_send = client._send

        async def hold(response_class: Any, method: str, path: str, data: Any = None,
                       response_data: Any = None, **rest: Any) -> Any:  # fmt: skip
            if response_class is ShareGroupSessionResponse:
                held.append((method, path, data, response_data))
                # As if the homeserver took it: the session counts as shared from now on.
                taken = ShareGroupSessionResponse.from_dict({}, *response_data)
                await client.receive_response(taken)
                return taken
            return await real_send(
                response_class, method, path, data, response_data=response_data, **rest
            )

        client._send = hold  # type: ignore[method-assign]
        try:
            share = await client.share_group_session(room_id, ignore_unverified_devices=True)
            assert isinstance(share, ShareGroupSessionResponse), share
        finally:
            client._send = real_send  # type: ignore[method-assign]
        assert held, "no to-device message carried the key"
        event_id = await self.send(room_id, body)
        client.invalidate_outbound_session(room_id)  # what is sent next, the bot can read

        async def release() -> None:
            for method, path, data, response_data in held:
                sent = await real_send(
                    ShareGroupSessionResponse, method, path, data, response_data=response_data
                )
                assert isinstance(sent, ShareGroupSessionResponse), sent

        return event_id, release

    async def send_file(
        self, room_id: str, name: str, data: bytes, mimetype: str, msgtype: str = "m.file"
    ) -> str:
        """Upload `data` (encrypted where the room is, as Element does) and post it."""
        encrypt = self.client.rooms[room_id].encrypted
        uploaded, keys = await self.client.upload(
            io.BytesIO(data), content_type=mimetype, filename=name, encrypt=encrypt,
            filesize=len(data),
        )  # fmt: skip
        assert isinstance(uploaded, UploadResponse), uploaded
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": name,
            "filename": name,
            "info": {"mimetype": mimetype, "size": len(data)},
        }
        if encrypt:
            content["file"] = {"url": uploaded.content_uri, **(keys or {})}
        else:
            content["url"] = uploaded.content_uri
        response = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        assert not isinstance(response, RoomSendError), response
        return str(response.event_id)

    async def download(self, content: dict[str, Any]) -> bytes:
        """A file event's bytes, decrypted where it came encrypted."""
        file = content.get("file")
        url = file["url"] if file else content["url"]
        response = await self.client.download(mxc=url)
        assert isinstance(response, DownloadResponse), response
        if not file:
            return bytes(response.body)
        key, digest, iv = file["key"]["k"], file["hashes"]["sha256"], file["iv"]
        return bytes(decrypt_attachment(response.body, key, digest, iv))

    def messages_from(self, sender: str, room_id: str | None = None) -> list[dict[str, Any]]:
        return [
            ev
            for rid, ev in self.events
            if ev.get("sender") == sender and (room_id is None or rid == room_id)
        ]

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 30.0,
        what: str = "condition",
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    async def wait_for_replies(
        self, sender: str, room_id: str, count: int = 1, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        return list(
            await self.wait_for(
                lambda: (
                    (found := self.messages_from(sender, room_id)) and len(found) >= count and found
                ),
                timeout,
                f"{count} message(s) from {sender} in {room_id}",
            )
        )

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 30.0) -> None:
        async def joined() -> bool:
            response = await self.client.joined_members(room_id)
            return any(m.user_id == user_id for m in getattr(response, "members", []))

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await joined():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{user_id} did not join {room_id} within {timeout} s")
