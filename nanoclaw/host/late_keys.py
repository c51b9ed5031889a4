"""Encrypted events that arrive before their keys: kept, tried again after every sync,
and, when the keys are long in coming, named once to the room.

A room key reaches the bot as a to-device message from the sender's device, which may come
after the event itself (a client that shares late, a second device of the sender's, a key
forwarded on request). Such an event is stored raw with the sync batch that brought it
(nanoclaw.host.waiting_table), its key is asked for from the sender's devices, and after
each sync every waiting event is tried again; one that decrypts goes through the normal
path exactly once, in the order it arrived, and leaves the table in the same transaction.
Nothing here trusts the event more than a timely one: it is classified the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from nio import AsyncClient, EncryptionError, Event, MegolmEvent

from nanoclaw.host.records import InboundMessage, WaitingEvent, now_ms
from nanoclaw.host.store import Store

log = logging.getLogger(__name__)

# A decrypted event's source, and its room, to the message it is (None: not one).
Classify = Callable[[dict[str, Any], str], InboundMessage | None]


def waiting_event(room_id: str, event: MegolmEvent) -> WaitingEvent:
    return WaitingEvent(event.event_id, room_id, event.sender, now_ms(), dict(event.source), None)


class LateKeys:
    def __init__(self, client: AsyncClient, store: Store, wait_seconds: float) -> None:
        self._client = client
        self._store = store
        self._wait_ms = int(wait_seconds * 1000)

    async def ask_for_key(self, room_id: str, source: dict[str, Any]) -> None:
        """Ask the sender's devices (and ours) for the event's room key; once per session."""
        event = MegolmEvent.from_dict(source)
        if isinstance(event, MegolmEvent):
            event.room_id = room_id
            with suppress(Exception):  # nio refuses a second request for one session
                await self._client.request_room_key(event)

    async def ask_again(self) -> None:
        """After a restart: nio's requests of the last run are gone with it."""
        for waiting in self._store.waiting():
            await self.ask_for_key(waiting.room_id, waiting.source)

    def after_sync(self, classify: Classify, registered_rooms: set[str]) -> list[str]:
        """Decrypt what the keys now allow, then tell the rooms of what has waited too long;
        the rooms that received messages."""
        touched: set[str] = set()
        still: list[WaitingEvent] = []
        for waiting in self._store.waiting():
            event = MegolmEvent.from_dict(waiting.source)
            if not isinstance(event, MegolmEvent):  # never decryptable: let it go, said
                log.warning("dropping malformed encrypted event %s", waiting.event_id)
                self._store.release_waiting(waiting.event_id, None)
                continue
            event.room_id = waiting.room_id
            try:
                decrypted = self._client.decrypt_event(event)
            except EncryptionError:
                still.append(waiting)  # no key yet
                continue
            message = (
                classify(dict(decrypted.source), waiting.room_id)
                if isinstance(decrypted, Event)
                else None
            )
            log.info(
                "decrypted %s, %.0f s after it came",
                waiting.event_id,
                (now_ms() - waiting.arrived_ts) / 1000,
                extra={"room_id": waiting.room_id, "event_id": waiting.event_id},
            )
            touched.update(self._store.release_waiting(waiting.event_id, message))
        self._tell_overdue(still, registered_rooms)
        return sorted(touched)

    def _tell_overdue(self, waiting: list[WaitingEvent], registered_rooms: set[str]) -> None:
        """One notice per room and sender whose events have waited too long."""
        due: dict[tuple[str, str], list[WaitingEvent]] = {}
        now = now_ms()
        for event in waiting:
            overdue = now - event.arrived_ts >= self._wait_ms
            if overdue and event.notified_ts is None and event.room_id in registered_rooms:
                due.setdefault((event.room_id, event.sender), []).append(event)
        for (room_id, sender), events in due.items():
            self._store.enqueue_replies(
                room_id,
                [{"msgtype": "m.notice", "body": notice(sender, events)}],
                waiting_told=[event.event_id for event in events],
            )


def notice(sender: str, events: list[WaitingEvent]) -> str:
    first = datetime.fromtimestamp(events[0].arrived_ts / 1000, UTC)
    count = "a message" if len(events) == 1 else f"{len(events)} messages"
    return (
        f"⚠️ I cannot read {count} from {sender} (since {first:%Y-%m-%d %H:%M} UTC): "
        "its keys have not reached me. Open one of your Matrix clients so it can share "
        "them, or check that it trusts this bot's device. I will answer as soon as they "
        "arrive."
    )
