"""The store's guarantees: migrations, idempotent sync batches, cursor and outbox atomicity."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nanoclaw.host.migrations import MIGRATIONS
from nanoclaw.host.records import InboundMessage
from nanoclaw.host.store import Store

ROOM = "!room:localhost"


def msg(event_id: str, ts: int = 1000, kind: str = "chat", body: str = "hi") -> InboundMessage:
    return InboundMessage(event_id, ROOM, "@alice:localhost", "Alice", ts, body, kind)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db.sqlite")
    s.upsert_group("fam", ROOM, {"room_id": ROOM}, "config")
    return s


def test_fresh_database_is_migrated_to_latest_and_uses_wal(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    assert s.schema_version == len(MIGRATIONS)
    mode = sqlite3.connect(tmp_path / "db.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this nanoclaw"):
        Store(path)


def test_sync_batch_and_token_commit_together_and_replays_are_absorbed(store: Store) -> None:
    touched = store.commit_sync([msg("$1"), msg("$2")], "s1", [(ROOM, 0)])
    assert touched == [ROOM]
    assert store.sync_token() == "s1"
    # The same batch again (a crash before the token moved would cause this) adds nothing.
    assert store.commit_sync([msg("$1"), msg("$2")], "s2") == []
    assert [m.message.event_id for m in store.pending("fam", ROOM, 50)] == ["$1", "$2"]
    assert store.sync_token() == "s2"


def test_history_and_own_messages_never_become_pending(store: Store) -> None:
    store.commit_sync([msg("$h", kind="history"), msg("$o", kind="own"), msg("$c")], "s1")
    assert [m.message.event_id for m in store.pending("fam", ROOM, 50)] == ["$c"]


def test_pending_is_bounded_to_the_newest_messages(store: Store) -> None:
    store.commit_sync([msg(f"${i}", ts=i) for i in range(10)], "s1")
    assert [m.message.event_id for m in store.pending("fam", ROOM, 3)] == ["$7", "$8", "$9"]


def test_reply_and_cursor_commit_atomically(store: Store) -> None:
    store.commit_sync([msg("$1"), msg("$2")], "s1")
    last = store.pending("fam", ROOM, 50)[-1].seq
    entries = store.enqueue_replies(ROOM, [{"body": "a"}, {"body": "b"}], cursor=("fam", last))
    assert store.pending("fam", ROOM, 50) == []
    assert [e.content["body"] for e in store.undelivered()] == ["a", "b"]
    assert len({e.txn_id for e in entries}) == 2
    store.mark_delivered(entries[0].id, "$sent")
    assert [e.id for e in store.undelivered()] == [entries[1].id]


def test_a_failed_enqueue_moves_no_cursor(store: Store) -> None:
    store.commit_sync([msg("$1")], "s1")
    seq = store.pending("fam", ROOM, 50)[0].seq
    with pytest.raises(TypeError):  # an unserialisable content aborts the transaction
        store.enqueue_replies(ROOM, [{"body": object()}], cursor=("fam", seq))
    assert [m.seq for m in store.pending("fam", ROOM, 50)] == [seq]
    assert store.undelivered() == []


def test_commands_are_pending_until_handled(store: Store) -> None:
    store.commit_sync([msg("$n", kind="command", body="/new")], "s1")
    assert [m.message.kind for m in store.pending("fam", ROOM, 50)] == ["command"]
    store.enqueue_replies(ROOM, [{"body": "ok"}], command_event="$n")
    assert store.pending("fam", ROOM, 50) == []


def test_new_group_starts_after_existing_messages(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite")
    s.commit_sync([msg("$old")], "s1")
    s.upsert_group("late", ROOM, {"room_id": ROOM}, "runtime")
    assert s.pending("late", ROOM, 50) == []
    s.commit_sync([msg("$new")], "s2")
    assert [m.message.event_id for m in s.pending("late", ROOM, 50)] == ["$new"]


def test_a_room_belongs_to_one_group(store: Store) -> None:
    with pytest.raises(ValueError, match="already belongs to group fam"):
        store.upsert_group("other", ROOM, {"room_id": ROOM}, "runtime")


def test_sessions_and_runs_are_recorded(store: Store) -> None:
    store.set_session("fam", "abc")
    store.record_run("fam", "ok")
    row = store.group("fam")
    assert row is not None and row.session_id == "abc" and row.last_run_status == "ok"


def test_config_groups_that_disappear_are_removed(store: Store) -> None:
    store.upsert_group("rt", "!other:localhost", {"room_id": "!other:localhost"}, "runtime")
    store.remove_groups_not_in("config", [])
    assert [g.folder for g in store.groups()] == ["rt"]
