"""Matrix in and out: the sync loop, backfill, invites, typing and the outbox sender.

Inbound is at-least-once from the homeserver and exactly-once into the store: a batch's
events and its next_batch token commit together, and a `limited` timeline is backfilled
with /messages up to the previous token, so downtime loses nothing. Outbound replies are
sent from the store's outbox with the transaction ID recorded there, so a resend after a
crash is deduplicated by the homeserver.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadError,
    EncryptionError,
    Event,
    JoinError,
    MegolmEvent,
    MessageDirection,
    RoomMessagesError,
    RoomReadMarkersError,
    RoomSendError,
    SyncError,
    SyncResponse,
    UploadFilterError,
    UploadResponse,
    WhoamiError,
)
from nio.crypto.attachments import decrypt_attachment

from nanoclaw.host.attachment import Attachment
from nanoclaw.host.crashpoint import crashpoint
from nanoclaw.host.events import classify
from nanoclaw.host.host_tools import ToolRefused
from nanoclaw.host.inbox import DownloadFailed
from nanoclaw.host.late_keys import LateKeys, waiting_event
from nanoclaw.host.records import InboundMessage, OutboxEntry, WaitingEvent
from nanoclaw.host.store import Store

log = logging.getLogger(__name__)

TIMELINE_LIMIT = 100  # per room and sync; the default of 10 loses messages after a gap
BACKFILL_LIMIT = 2000  # events per room and gap; beyond that the oldest are dropped, loudly
SYNC_TIMEOUT_MS = 30_000
# Errors that a resend cannot fix; anything else (rate limits, 5xx) is retried later.
PERMANENT_SEND_ERRORS = frozenset(
    {"M_FORBIDDEN", "M_NOT_FOUND", "M_TOO_LARGE", "M_BAD_JSON", "M_NOT_JSON"}
)


async def maintain_keys(client: AsyncClient) -> None:
    """The end-to-end key upkeep that nio's sync_forever would do, for our own sync loop."""
    if client.olm is None:
        return
    await client.send_to_device_messages()
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())


class MatrixError(Exception):
    """The homeserver refused something the host cannot do without."""


class MatrixChannel:
    def __init__(
        self,
        homeserver: str,
        user_id: str,
        access_token: str,
        owners: Sequence[str],
        store: Store,
        crypto_dir: Path | None,
        key_wait_seconds: float = 600.0,
    ) -> None:
        self.user_id = user_id
        self._owners = frozenset(owners)
        self._store = store
        self._access_token = access_token
        self._crypto_dir = crypto_dir
        config = AsyncClientConfig(
            max_limit_exceeded=3,
            max_timeouts=3,
            store_sync_tokens=False,  # the token lives in our store, committed with events
            encryption_enabled=crypto_dir is not None,
        )
        store_path = str(crypto_dir) if crypto_dir is not None else ""
        self.client = AsyncClient(homeserver, user_id, store_path=store_path, config=config)
        self.late_keys = LateKeys(self.client, store, key_wait_seconds)
        self._filter_id: str | None = None
        self._send_lock = asyncio.Lock()
        self.synced = asyncio.Event()

    async def connect(self, display_name: str) -> None:
        """Check the token, load the crypto store and upload the sync filter."""
        self.client.access_token = self._access_token
        whoami = await self.client.whoami()
        if isinstance(whoami, WhoamiError):
            raise MatrixError(f"the access token was refused: {whoami.message}")
        if whoami.user_id != self.user_id:
            raise MatrixError(
                f"the access token belongs to {whoami.user_id}, not matrix.user_id {self.user_id}"
            )
        if not whoami.device_id:
            raise MatrixError("the access token has no device ID; log in to get a device token")
        if self._crypto_dir is not None:
            self._crypto_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.client.restore_login(self.user_id, whoami.device_id, self._access_token)
        uploaded = await self.client.upload_filter(
            room={"timeline": {"limit": TIMELINE_LIMIT}},
            presence={"types": []},
        )
        if isinstance(uploaded, UploadFilterError):
            raise MatrixError(f"could not upload the sync filter: {uploaded.message}")
        self._filter_id = uploaded.filter_id
        # Setting it unconditionally would post a member event into every room at each start.
        current = await self.client.get_displayname()
        if getattr(current, "displayname", None) != display_name:
            await self.client.set_displayname(display_name)

    async def close(self) -> None:
        await self.client.close()

    # --- inbound --------------------------------------------------------------

    async def sync_forever(self, on_rooms: Callable[[list[str]], None]) -> None:
        """Sync, store and hand on. `on_rooms` gets rooms with new chat after commit."""
        since = self._store.sync_token()
        first = True
        failures = 0
        while True:
            response = await self.client.sync(
                timeout=0 if first else SYNC_TIMEOUT_MS,
                sync_filter=self._filter_id,
                since=since,
                # Full state once per process, so nio knows every room's members and
                # encryption before we send into a room that has been quiet.
                full_state=first or None,
            )
            if isinstance(response, SyncError):
                failures += 1
                delay = min(60.0, 2.0**failures)
                log.warning("sync failed (%s); retrying in %.0f s", response.message, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            await maintain_keys(self.client)
            await self._handle_invites(response)
            registered = {group.room_id for group in self._store.groups()}
            messages, joined, waiting = await self._collect(response, since, registered)
            touched = self._store.commit_sync(messages, response.next_batch, joined, waiting)
            since = response.next_batch
            if first:  # the key requests of an earlier run went with it
                await self.late_keys.ask_again()
            first = False
            # Keys that came in this batch may open events that waited for them.
            opened = self.late_keys.after_sync(self._classify_decrypted, registered)
            touched = sorted({*touched, *opened})
            self.synced.set()
            await self.deliver_pending()
            if touched:
                on_rooms(touched)

    async def _handle_invites(self, response: SyncResponse) -> None:
        for room_id, info in response.rooms.invite.items():
            inviter = next(
                (
                    getattr(ev, "sender", None)
                    for ev in info.invite_state
                    if getattr(ev, "state_key", None) == self.user_id
                ),
                None,
            )
            if inviter in self._owners:
                log.info("accepting invite from %s", inviter, extra={"room_id": room_id})
                await self.client.join(room_id)
            else:
                log.warning(
                    "rejecting invite from non-owner %s", inviter, extra={"room_id": room_id}
                )
                await self.client.room_leave(room_id)

    async def _collect(
        self, response: SyncResponse, since: str | None, registered: set[str]
    ) -> tuple[list[InboundMessage], list[tuple[str, int]], list[WaitingEvent]]:
        messages: list[InboundMessage] = []
        joined: list[tuple[str, int]] = []
        waiting: list[WaitingEvent] = []
        for room_id, info in response.rooms.join.items():
            events: list[Any] = list(info.timeline.events)
            if info.timeline.limited and since is not None and info.timeline.prev_batch:
                events = await self._backfill(room_id, info.timeline.prev_batch, since) + events
            joined_ts = self._store.room_joined_ts(room_id)
            if joined_ts is None:
                joined_ts = self._join_time(events)
                joined.append((room_id, joined_ts))
            room = self.client.rooms.get(room_id)
            for event in events:
                if isinstance(event, MegolmEvent):
                    if room_id not in registered:  # nobody there to answer
                        continue
                    log.warning(
                        "cannot decrypt %s yet: keeping it and asking for its key",
                        event.event_id,
                        extra={"room_id": room_id, "event_id": event.event_id},
                    )
                    waiting.append(waiting_event(room_id, event))
                    await self.late_keys.ask_for_key(room_id, dict(event.source))
                    continue
                if not isinstance(event, Event):
                    log.warning(
                        "skipping malformed event in %s", room_id, extra={"room_id": room_id}
                    )
                    continue
                source = dict(event.source)
                sender = source.get("sender", "")
                name = room.user_name(sender) if room is not None else None
                message = classify(source, room_id, self.user_id, name or sender, joined_ts)
                if message is not None:
                    messages.append(message)
        return messages, joined, waiting

    def _classify_decrypted(self, source: dict[str, Any], room_id: str) -> InboundMessage | None:
        """A late-decrypted event, judged as it would have been when it came."""
        room = self.client.rooms.get(room_id)
        sender = source.get("sender", "")
        name = room.user_name(sender) if room is not None else None
        joined_ts = self._store.room_joined_ts(room_id)
        return classify(source, room_id, self.user_id, name or sender, joined_ts)

    def _join_time(self, events: Sequence[Any]) -> int:
        """When the bot joined a room first seen now: its join event, else 'after all of these'."""
        for event in events:
            source = getattr(event, "source", {})
            if (
                source.get("type") == "m.room.member"
                and source.get("state_key") == self.user_id
                and source.get("content", {}).get("membership") == "join"
            ):
                return int(source.get("origin_server_ts", 0))
        stamps = [int(getattr(e, "source", {}).get("origin_server_ts", 0)) for e in events]
        return max(stamps) + 1 if stamps else 0

    async def _backfill(self, room_id: str, start: str, until: str) -> list[Any]:
        """Events between our last sync token and a limited timeline, oldest first."""
        fetched: list[Any] = []
        token: str | None = start
        while token and len(fetched) < BACKFILL_LIMIT:
            page = await self.client.room_messages(
                room_id, start=token, end=until, direction=MessageDirection.back, limit=100
            )
            if isinstance(page, RoomMessagesError):
                log.error(
                    "backfill of %s failed: %s", room_id, page.message, extra={"room_id": room_id}
                )
                break
            if not page.chunk:
                break
            fetched.extend(page.chunk)
            token = page.end
        if len(fetched) >= BACKFILL_LIMIT:
            log.error(
                "gap in %s longer than %d events; older ones skipped", room_id, BACKFILL_LIMIT
            )
        if fetched:
            log.info("backfilled %d events", len(fetched), extra={"room_id": room_id})
        return list(reversed(fetched))

    # --- outbound -------------------------------------------------------------

    async def deliver(self, entries: Sequence[OutboxEntry]) -> None:
        """Send outbox entries in order; each is marked delivered once accepted."""
        async with self._send_lock:
            for entry in entries:
                await self._send_one(entry)

    async def deliver_pending(self) -> None:
        async with self._send_lock:
            for entry in self._store.undelivered():
                await self._send_one(entry)

    async def _send_one(self, entry: OutboxEntry) -> None:
        response = await self.client.room_send(
            entry.room_id,
            "m.room.message",
            entry.content,
            tx_id=entry.txn_id,
            ignore_unverified_devices=True,  # see README: device trust
        )
        if isinstance(response, RoomSendError):
            errcode = response.status_code  # nio puts the Matrix errcode here
            if errcode in PERMANENT_SEND_ERRORS:
                log.error(
                    "homeserver refused a reply (%s: %s); dropping it",
                    errcode,
                    response.message,
                    extra={"room_id": entry.room_id},
                )
                self._store.mark_delivered(entry.id, f"refused:{errcode}")
                return
            raise MatrixError(f"sending to {entry.room_id} failed: {response.message}")
        crashpoint("after-send")
        self._store.mark_delivered(entry.id, response.event_id)

    async def ensure_joined(self, room_id: str) -> None:
        if room_id not in self.client.rooms:
            response = await self.client.join(room_id)
            if isinstance(response, JoinError):
                log.warning(
                    "could not join %s: %s", room_id, response.message, extra={"room_id": room_id}
                )

    def room_name(self, room_id: str) -> str | None:
        room = self.client.rooms.get(room_id)
        return room.display_name if room is not None else None

    async def download(self, attachment: Attachment) -> bytes:
        """A file's bytes, decrypted where the room is encrypted (its hash checked)."""
        response = await self.client.download(mxc=attachment.url)
        if isinstance(response, DownloadError):
            raise DownloadFailed(response.message)
        data = response.body
        if not isinstance(data, bytes):
            raise DownloadFailed("the homeserver gave no content")
        if attachment.encryption is None:
            return data
        file = attachment.encryption
        try:
            return bytes(
                decrypt_attachment(data, file["key"]["k"], file["hashes"]["sha256"], file["iv"])
            )
        except (EncryptionError, KeyError, TypeError, ValueError) as error:
            raise DownloadFailed(f"it does not decrypt: {error}") from None

    async def upload(self, room_id: str, name: str, data: bytes, mimetype: str) -> dict[str, Any]:
        """Upload a file for `room_id`: the content's "url", or its "file" (key, iv and
        hash) where the room is encrypted."""
        room = self.client.rooms.get(room_id)
        encrypt = bool(room and room.encrypted)
        uploaded, keys = await self.client.upload(
            io.BytesIO(data), content_type=mimetype, filename=name, encrypt=encrypt,
            filesize=len(data),
        )  # fmt: skip
        if not isinstance(uploaded, UploadResponse):
            raise ToolRefused(f"the homeserver refused the upload: {uploaded.message}")
        if encrypt:
            return {"file": {"url": uploaded.content_uri, **(keys or {})}}
        return {"url": uploaded.content_uri}

    async def mark_read(self, room_id: str, event_id: str) -> None:
        """A read receipt (and the read marker) up to `event_id`: people see the agent has
        picked their messages up. Best effort: a refusal costs nothing but the receipt."""
        try:
            response = await self.client.room_read_markers(room_id, event_id, event_id)
        except Exception as error:  # the homeserver unreachable: the run goes on
            log.debug("no read receipt: %s", error, extra={"room_id": room_id})
            return
        if isinstance(response, RoomReadMarkersError):
            log.debug("read receipt refused: %s", response.message, extra={"room_id": room_id})

    @asynccontextmanager
    async def typing(self, room_id: str) -> AsyncIterator[None]:
        """Show 'typing' while the body runs, refreshed before the server lets it lapse."""

        async def keep_typing() -> None:
            while True:
                await self.client.room_typing(room_id, True, timeout=30_000)
                await asyncio.sleep(20)

        task = asyncio.create_task(keep_typing())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
            with suppress(Exception):
                await self.client.room_typing(room_id, False)
