"""The host's durable state in SQLite: messages, groups, cursors, sessions, the outbox,
scheduled tasks and their runs, encrypted events that wait for their keys, and the audit
trail of tool calls.

Every state change that must survive a crash happens in one transaction with the thing it
depends on: a sync batch's events with its next_batch token, a reply's outbox row with
the cursor it answers. That is what makes delivery exactly-once end to end.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nanoclaw.host.attachment import Attachment
from nanoclaw.host.audit_table import AuditTable
from nanoclaw.host.migrations import MIGRATIONS
from nanoclaw.host.records import (
    GroupRow,
    InboundMessage,
    OutboxEntry,
    StoredMessage,
    WaitingEvent,
    now_ms,
)
from nanoclaw.host.task_table import TaskTable, queue_replies
from nanoclaw.host.waiting_table import MAX_WAITING_PER_ROOM, WaitingTable, hold

log = logging.getLogger(__name__)


class Store(TaskTable, WaitingTable, AuditTable):
    """A thin, typed layer over one SQLite connection (the host is single-threaded)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the reply it enables goes out.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {version} is newer than this nanoclaw "
                f"({len(MIGRATIONS)}); upgrade nanoclaw or restore a matching backup"
            )
        for index in range(version, len(MIGRATIONS)):
            with self._tx() as db:
                for statement in _statements(MIGRATIONS[index]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {index + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- sync -----------------------------------------------------------------

    def sync_token(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'sync_token'").fetchone()
        return None if row is None else str(row[0])

    def commit_sync(
        self,
        messages: Sequence[InboundMessage],
        next_batch: str,
        joined: Iterable[tuple[str, int]] = (),
        waiting: Sequence[WaitingEvent] = (),
    ) -> list[str]:
        """Store a sync batch, and the events in it that wait for their keys, and move the
        token in one transaction.

        Returns the room IDs that received new chat or command messages. A batch seen
        again after a crash is absorbed by the unique event ID.
        """
        with self._tx() as db:
            for room_id, ts in joined:
                db.execute(
                    "INSERT INTO rooms (room_id, joined_ts) VALUES (?, ?) "
                    "ON CONFLICT (room_id) DO NOTHING",
                    (room_id, ts),
                )
            touched = _insert_messages(db, messages)
            if dropped := hold(db, waiting):
                log.warning(
                    "let go of the %d oldest encrypted events still waiting for their keys "
                    "(at most %d per room)",
                    dropped,
                    MAX_WAITING_PER_ROOM,
                )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('sync_token', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (next_batch,),
            )
        return sorted(touched)

    def release_waiting(self, event_id: str, message: InboundMessage | None) -> list[str]:
        """A waiting event, decrypted at last: stored as the message it is (None: nothing
        to answer) and no longer waiting, in one transaction. Returns the rooms touched."""
        with self._tx() as db:
            touched = _insert_messages(db, [message] if message is not None else [])
            db.execute("DELETE FROM undecrypted WHERE event_id = ?", (event_id,))
        return sorted(touched)

    def record_attachment(self, event_id: str, attachment: Attachment) -> None:
        """What became of a message's file: where it was put, or why it was not."""
        self._db.execute(
            "UPDATE messages SET attachment = ? WHERE event_id = ?",
            (attachment.to_json(), event_id),
        )

    def room_joined_ts(self, room_id: str) -> int | None:
        row = self._db.execute(
            "SELECT joined_ts FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def message(self, event_id: str) -> InboundMessage | None:
        row = self._db.execute("SELECT * FROM messages WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else _message(row)

    # --- groups ---------------------------------------------------------------

    def upsert_group(
        self, folder: str, room_id: str, definition: dict[str, Any], source: str
    ) -> None:
        """Create or update a group. A new group starts answering from now on."""
        with self._tx() as db:
            clash = db.execute(
                "SELECT folder FROM groups WHERE room_id = ? AND folder != ?", (room_id, folder)
            ).fetchone()
            if clash is not None:
                raise ValueError(f"room {room_id} already belongs to group {clash[0]}")
            latest = db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = ?", (room_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO groups (folder, room_id, definition, source, cursor)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (folder) DO UPDATE SET room_id = excluded.room_id,"
                " definition = excluded.definition, source = excluded.source",
                (folder, room_id, json.dumps(definition, sort_keys=True), source, latest),
            )

    def remove_groups_not_in(self, source: str, keep: Iterable[str]) -> None:
        keep = list(keep)
        marks = ",".join("?" * len(keep))
        with self._tx() as db:
            db.execute(
                f"DELETE FROM groups WHERE source = ? AND folder NOT IN ({marks})",
                (source, *keep),
            )

    def groups(self) -> list[GroupRow]:
        return [_group(r) for r in self._db.execute("SELECT * FROM groups ORDER BY folder")]

    def group(self, folder: str) -> GroupRow | None:
        row = self._db.execute("SELECT * FROM groups WHERE folder = ?", (folder,)).fetchone()
        return None if row is None else _group(row)

    def set_session(self, folder: str, session_id: str | None) -> None:
        self._db.execute("UPDATE groups SET session_id = ? WHERE folder = ?", (session_id, folder))

    def record_run(self, folder: str, status: str) -> None:
        self._db.execute(
            "UPDATE groups SET last_run_ts = ?, last_run_status = ? WHERE folder = ?",
            (now_ms(), status, folder),
        )

    def pending(self, folder: str, room_id: str, limit: int) -> list[StoredMessage]:
        """Chat messages and unhandled commands after the group's cursor, oldest first.

        When more than `limit` chat messages wait, only the newest `limit` are returned:
        the prompt is bounded, the rest is old context.
        """
        rows = self._db.execute(
            "SELECT * FROM (SELECT m.* FROM messages m JOIN groups g ON g.folder = ?"
            " WHERE m.room_id = ? AND m.seq > g.cursor"
            " AND (m.kind = 'chat' OR (m.kind = 'command' AND m.handled = 0))"
            " ORDER BY m.seq DESC LIMIT ?) ORDER BY seq",
            (folder, room_id, limit),
        ).fetchall()
        return [StoredMessage(int(r["seq"]), _message(r)) for r in rows]

    def advance_cursor(self, folder: str, seq: int) -> None:
        self._db.execute(
            "UPDATE groups SET cursor = MAX(cursor, ?) WHERE folder = ?", (seq, folder)
        )

    def mark_command_handled(self, event_id: str) -> None:
        self._db.execute("UPDATE messages SET handled = 1 WHERE event_id = ?", (event_id,))

    # --- outbox ---------------------------------------------------------------

    def enqueue_replies(
        self,
        room_id: str,
        contents: Sequence[dict[str, Any]],
        *,
        cursor: tuple[str, int] | None = None,
        command_event: str | None = None,
        waiting_told: Sequence[str] = (),
    ) -> list[OutboxEntry]:
        """Queue replies and, atomically with them, mark what they answer.

        `cursor` (folder, seq) moves the group's cursor; `command_event` marks a command
        handled; `waiting_told`, events waiting for their keys that the room is told of.
        After this commits, the answer can be sent but never regenerated.
        """
        with self._tx() as db:
            db.executemany(
                "UPDATE undecrypted SET notified_ts = ? WHERE event_id = ?",
                [(now_ms(), event_id) for event_id in waiting_told],
            )
            if cursor is not None:
                db.execute(
                    "UPDATE groups SET cursor = MAX(cursor, ?) WHERE folder = ?",
                    (cursor[1], cursor[0]),
                )
            if command_event is not None:
                db.execute("UPDATE messages SET handled = 1 WHERE event_id = ?", (command_event,))
            entries = queue_replies(db, room_id, contents)
        return entries

    def undelivered(self) -> list[OutboxEntry]:
        rows = self._db.execute("SELECT * FROM outbox WHERE event_id IS NULL ORDER BY id")
        return [
            OutboxEntry(int(r["id"]), r["txn_id"], r["room_id"], json.loads(r["content"]))
            for r in rows
        ]

    def mark_delivered(self, entry_id: int, event_id: str) -> None:
        self._db.execute("UPDATE outbox SET event_id = ? WHERE id = ?", (event_id, entry_id))


def _insert_messages(db: sqlite3.Connection, messages: Sequence[InboundMessage]) -> set[str]:
    """Insert what is new; the rooms that received chat or command messages."""
    touched: set[str] = set()
    for m in messages:
        cur = db.execute(
            "INSERT OR IGNORE INTO messages (event_id, room_id, sender, sender_name, ts,"
            " body, reply_to, thread_root, mentions_bot, kind, attachment)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.event_id,
                m.room_id,
                m.sender,
                m.sender_name,
                m.ts,
                m.body,
                m.reply_to,
                m.thread_root,
                int(m.mentions_bot),
                m.kind,
                m.attachment.to_json() if m.attachment else None,
            ),
        )
        if cur.rowcount and m.kind in ("chat", "command"):
            touched.add(m.room_id)
    return touched


def _statements(script: str) -> list[str]:
    # executescript() would commit our transaction; split and run statement by statement.
    return [s.strip() for s in _strip_comments(script).split(";") if s.strip()]


def _strip_comments(script: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in script.splitlines())


def _message(row: sqlite3.Row) -> InboundMessage:
    return InboundMessage(
        event_id=row["event_id"],
        room_id=row["room_id"],
        sender=row["sender"],
        sender_name=row["sender_name"],
        ts=int(row["ts"]),
        body=row["body"],
        kind=row["kind"],
        reply_to=row["reply_to"],
        thread_root=row["thread_root"],
        mentions_bot=bool(row["mentions_bot"]),
        attachment=Attachment.from_json(row["attachment"]) if row["attachment"] else None,
    )


def _group(row: sqlite3.Row) -> GroupRow:
    return GroupRow(
        folder=row["folder"],
        room_id=row["room_id"],
        definition=json.loads(row["definition"]),
        source=row["source"],
        cursor=int(row["cursor"]),
        session_id=row["session_id"],
        last_run_ts=row["last_run_ts"],
        last_run_status=row["last_run_status"],
    )
