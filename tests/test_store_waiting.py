"""Encrypted events that wait for their keys, in the store: kept with their sync batch,
released exactly once with the message they turn out to be, and told of once."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw.host.records import InboundMessage, WaitingEvent
from nanoclaw.host.store import Store
from nanoclaw.host.waiting_table import MAX_WAITING_PER_ROOM

ROOM = "!room:localhost"
OTHER = "!other:localhost"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "nanoclaw.db")


def held(event_id: str, room: str = ROOM, arrived: int = 1000) -> WaitingEvent:
    source = {"type": "m.room.encrypted", "event_id": event_id, "content": {"session_id": "s"}}
    return WaitingEvent(event_id, room, "@alice:localhost", arrived, source, None)


def message(event_id: str, body: str = "hello") -> InboundMessage:
    return InboundMessage(event_id, ROOM, "@alice:localhost", "Alice", 5, body, "chat")


def test_an_event_is_kept_with_its_batch_and_a_replayed_batch_keeps_it_once(
    store: Store,
) -> None:
    store.commit_sync([], "token-1", waiting=[held("$b", arrived=2000), held("$a")])
    store.commit_sync([], "token-1", waiting=[held("$a")])  # the same batch after a crash
    assert [w.event_id for w in store.waiting()] == ["$a", "$b"]  # in the order they came
    assert store.waiting()[0].source["content"] == {"session_id": "s"}
    assert store.sync_token() == "token-1"


def test_a_released_event_becomes_its_message_once(store: Store) -> None:
    store.commit_sync([], "t", waiting=[held("$a")])
    assert store.release_waiting("$a", message("$a")) == [ROOM]
    assert store.waiting() == [] and store.message("$a") == message("$a")
    # Released again (a retry racing a replay): no second message, no room to wake.
    store.commit_sync([], "t", waiting=[held("$a")])
    assert store.waiting() == []  # already stored as a message: not kept again
    assert store.release_waiting("$a", message("$a")) == []


def test_an_event_that_is_no_message_leaves_without_one(store: Store) -> None:
    store.commit_sync([], "t", waiting=[held("$a")])
    assert store.release_waiting("$a", None) == []
    assert store.waiting() == [] and store.message("$a") is None


def test_how_many_wait_and_since_when_by_room(store: Store) -> None:
    store.commit_sync(
        [], "t", waiting=[held("$a", arrived=3000), held("$b", OTHER, 1000), held("$c")]
    )
    assert store.waiting_in(ROOM) == (2, 1000)
    assert store.waiting_in(OTHER) == (1, 1000)
    assert store.waiting_in() == (3, 1000)
    assert store.waiting_in("!none:localhost") == (0, None)


def test_the_notice_and_its_mark_commit_together(store: Store) -> None:
    store.commit_sync([], "t", waiting=[held("$a"), held("$b")])
    entries = store.enqueue_replies(ROOM, [{"body": "notice"}], waiting_told=["$a"])
    assert (
        [e.content for e in store.undelivered()]
        == [{"body": "notice"}]
        == [e.content for e in entries]
    )
    told = {w.event_id: w.notified_ts for w in store.waiting()}
    assert told["$a"] is not None and told["$b"] is None


def test_a_room_flooded_with_events_no_key_opens_keeps_the_newest(store: Store) -> None:
    events = [held(f"${n:03}", arrived=1000 + n) for n in range(MAX_WAITING_PER_ROOM + 5)]
    store.commit_sync([], "t", waiting=[held("$other", OTHER)])
    store.commit_sync([], "t", waiting=events)
    kept = [w.event_id for w in store.waiting() if w.room_id == ROOM]
    assert kept == [e.event_id for e in events[5:]]
    assert store.waiting_in(OTHER) == (1, 1000)  # another room's are not touched
