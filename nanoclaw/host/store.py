"""The host's durable state in SQLite: messages, groups, cursors, sessions, the outbox,
scheduled tasks and their runs.

Every state change that must survive a crash happens in one transaction with the thing it
depends on: a sync batch's events with its next_batch token, a reply's outbox row with
the cursor it answers. That is what makes delivery exactly-once end to end.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Each entry migrates the schema from version i to i+1. Never edit a shipped entry:
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE rooms (
        room_id TEXT PRIMARY KEY,
        joined_ts INTEGER NOT NULL          -- messages older than this predate the bot
    );
    CREATE TABLE groups (
        folder TEXT PRIMARY KEY,
        room_id TEXT NOT NULL UNIQUE,
        definition TEXT NOT NULL,           -- JSON of the group's settings
        source TEXT NOT NULL CHECK (source IN ('config', 'runtime')),
        cursor INTEGER NOT NULL DEFAULT 0,  -- last message seq the agent has answered
        session_id TEXT,
        last_run_ts INTEGER,
        last_run_status TEXT
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        room_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_name TEXT NOT NULL,
        ts INTEGER NOT NULL,
        body TEXT NOT NULL,
        reply_to TEXT,
        thread_root TEXT,
        mentions_bot INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('chat', 'command', 'history', 'own')),
        handled INTEGER NOT NULL DEFAULT 0  -- commands only: already answered
    );
    CREATE INDEX messages_by_room ON messages (room_id, seq);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        txn_id TEXT NOT NULL UNIQUE,        -- Matrix transaction ID: resending is idempotent
        room_id TEXT NOT NULL,
        content TEXT NOT NULL,
        created_ts INTEGER NOT NULL,
        event_id TEXT                       -- set once the homeserver accepted it
    );
    """,
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,                -- a declared task's name, or a number
        folder TEXT NOT NULL,
        prompt TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('cron', 'interval', 'once')),
        schedule TEXT NOT NULL,
        context TEXT NOT NULL CHECK (context IN ('group', 'isolated')),
        status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'done', 'cancelled')),
        source TEXT NOT NULL CHECK (source IN ('config', 'runtime')),
        next_due INTEGER,                   -- ms; the slot the scheduler waits for
        run_requested INTEGER,              -- ms; an operator's run outside the schedule
        created_ts INTEGER NOT NULL
    );
    CREATE TABLE task_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL REFERENCES tasks (id),
        slot INTEGER NOT NULL,              -- ms; the due time this run is for
        started_ts INTEGER NOT NULL,
        ended_ts INTEGER,
        status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'error', 'interrupted')),
        summary TEXT,
        error TEXT,
        UNIQUE (task_id, slot)              -- a slot is claimed once, whatever happens later
    );
    """,
)


@dataclass(frozen=True)
class InboundMessage:
    """A room message as it is stored; `kind` says how the router treats it."""

    event_id: str
    room_id: str
    sender: str
    sender_name: str
    ts: int
    body: str
    kind: str
    reply_to: str | None = None
    thread_root: str | None = None
    mentions_bot: bool = False


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    message: InboundMessage


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    txn_id: str
    room_id: str
    content: dict[str, Any]


@dataclass(frozen=True)
class GroupRow:
    folder: str
    room_id: str
    definition: dict[str, Any]
    source: str
    cursor: int
    session_id: str | None
    last_run_ts: int | None
    last_run_status: str | None


@dataclass(frozen=True)
class TaskSpec:
    """What a task does and when; its state lives beside it in TaskRow."""

    folder: str
    prompt: str
    kind: str  # cron, interval or once (see schedule.py)
    schedule: str
    context: str  # group: the group's session; isolated: a fresh one


@dataclass(frozen=True)
class TaskRow:
    id: str
    spec: TaskSpec
    status: str  # active, paused, done or cancelled
    source: str  # config or runtime
    next_due: int | None
    run_requested: int | None


@dataclass(frozen=True)
class TaskRun:
    id: int
    task_id: str
    slot: int
    started_ts: int
    ended_ts: int | None
    status: str  # running, ok, error or interrupted
    summary: str | None
    error: str | None


@dataclass(frozen=True)
class RunClaim:
    """A slot this process won: the run is recorded as running, nobody else will take it."""

    run_id: int
    task: TaskRow
    slot: int
    started_ts: int


_TASK_FIELDS = frozenset(
    ("prompt", "kind", "schedule", "context", "status", "next_due", "run_requested")
)


def now_ms() -> int:
    return int(time.time() * 1000)


class Store:
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
    ) -> list[str]:
        """Store a sync batch and move the token in one transaction.

        Returns the room IDs that received new chat or command messages. A batch seen
        again after a crash is absorbed by the unique event ID.
        """
        touched: set[str] = set()
        with self._tx() as db:
            for room_id, ts in joined:
                db.execute(
                    "INSERT INTO rooms (room_id, joined_ts) VALUES (?, ?) "
                    "ON CONFLICT (room_id) DO NOTHING",
                    (room_id, ts),
                )
            for m in messages:
                cur = db.execute(
                    "INSERT OR IGNORE INTO messages (event_id, room_id, sender, sender_name, ts,"
                    " body, reply_to, thread_root, mentions_bot, kind)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    ),
                )
                if cur.rowcount and m.kind in ("chat", "command"):
                    touched.add(m.room_id)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('sync_token', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (next_batch,),
            )
        return sorted(touched)

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
    ) -> list[OutboxEntry]:
        """Queue replies and, atomically with them, mark what they answer.

        `cursor` (folder, seq) moves the group's cursor; `command_event` marks a command
        handled. After this commits, the answer can be sent but never regenerated.
        """
        with self._tx() as db:
            if cursor is not None:
                db.execute(
                    "UPDATE groups SET cursor = MAX(cursor, ?) WHERE folder = ?",
                    (cursor[1], cursor[0]),
                )
            if command_event is not None:
                db.execute("UPDATE messages SET handled = 1 WHERE event_id = ?", (command_event,))
            entries = _queue(db, room_id, contents)
        return entries

    def undelivered(self) -> list[OutboxEntry]:
        rows = self._db.execute("SELECT * FROM outbox WHERE event_id IS NULL ORDER BY id")
        return [
            OutboxEntry(int(r["id"]), r["txn_id"], r["room_id"], json.loads(r["content"]))
            for r in rows
        ]

    def mark_delivered(self, entry_id: int, event_id: str) -> None:
        self._db.execute("UPDATE outbox SET event_id = ? WHERE id = ?", (event_id, entry_id))

    # --- scheduled tasks --------------------------------------------------------

    def add_task(self, spec: TaskSpec, next_due: int | None) -> str:
        """A runtime task; its id is the next free number (declared tasks have names)."""
        with self._tx() as db:
            number = db.execute(
                "SELECT COALESCE(MAX(CAST(id AS INTEGER)), 0) + 1 FROM tasks WHERE id GLOB '[0-9]*'"
            ).fetchone()[0]
            _insert_task(db, str(number), spec, "runtime", next_due)
        return str(number)

    def declare_tasks(self, declared: Sequence[tuple[str, TaskSpec, int | None]]) -> None:
        """Make the config file's tasks current: new ones are added, changed ones take the
        new spec and first slot, unchanged ones keep their state (an operator's pause
        survives a restart), and those no longer declared are cancelled until they are
        declared again."""
        with self._tx() as db:
            for task_id, spec, next_due in declared:
                row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is None:
                    _insert_task(db, task_id, spec, "config", next_due)
                elif _task(row).spec != spec or row["status"] == "cancelled":
                    db.execute(
                        "UPDATE tasks SET folder = ?, prompt = ?, kind = ?, schedule = ?,"
                        " context = ?, status = 'active', next_due = ?"
                        " WHERE id = ?",
                        (*_spec_values(spec), next_due, task_id),
                    )
            keep = [task_id for task_id, _, _ in declared]
            db.execute(
                "UPDATE tasks SET status = 'cancelled' WHERE source = 'config'"
                f" AND id NOT IN ({','.join('?' * len(keep))})",
                keep,
            )

    def tasks(self, folder: str | None = None) -> list[TaskRow]:
        rows = self._db.execute(
            "SELECT * FROM tasks WHERE ? IS NULL OR folder = ? ORDER BY created_ts, id",
            (folder, folder),
        )
        return [_task(r) for r in rows]

    def task(self, task_id: str) -> TaskRow | None:
        row = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _task(row)

    def update_task(self, task_id: str, **fields: Any) -> None:
        """Set some of a task's columns (a spec field, status, next_due, run_requested)."""
        unknown = set(fields) - _TASK_FIELDS
        assert not unknown, unknown
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._tx() as db:
            db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", (*fields.values(), task_id))

    def next_due(self) -> int | None:
        """The earliest time anything is due: the scheduler sleeps until then."""
        row = self._db.execute(
            "SELECT MIN(due) FROM (SELECT next_due AS due FROM tasks WHERE status = 'active'"
            " UNION ALL SELECT run_requested FROM tasks WHERE status != 'cancelled')"
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def due_tasks(self, now: int) -> list[TaskRow]:
        rows = self._db.execute(
            "SELECT * FROM tasks WHERE (status = 'active' AND next_due <= ?)"
            " OR (status != 'cancelled' AND run_requested <= ?) ORDER BY next_due, id",
            (now, now),
        )
        return [_task(r) for r in rows]

    def claim(self, task: TaskRow, slot: int, following: int | None) -> RunClaim | None:
        """Claim the scheduled `slot` of `task` as read, moving next_due to `following`
        (None: a once task is done). None when the task changed since it was read, or the
        slot was claimed before: either way, it is not ours to run."""
        with self._tx() as db:
            moved = db.execute(
                "UPDATE tasks SET next_due = ?,"
                " status = CASE WHEN ? IS NULL THEN 'done' ELSE status END"
                " WHERE id = ? AND status = 'active' AND next_due = ?",
                (following, following, task.id, task.next_due),
            )
            return _start_run(db, task, slot) if moved.rowcount else None

    def claim_requested(self, task: TaskRow) -> RunClaim | None:
        """Claim an operator's `tasks run` request, leaving the schedule as it is."""
        assert task.run_requested is not None
        with self._tx() as db:
            taken = db.execute(
                "UPDATE tasks SET run_requested = NULL WHERE id = ? AND run_requested = ?",
                (task.id, task.run_requested),
            )
            return _start_run(db, task, task.run_requested) if taken.rowcount else None

    def finish_run(
        self,
        run_id: int,
        status: str,
        room_id: str,
        contents: Sequence[dict[str, Any]],
        *,
        summary: str | None = None,
        error: str | None = None,
    ) -> list[OutboxEntry]:
        """Record a run's end and queue what it posts, in one transaction: a run that is
        recorded as finished has its result in the outbox, and one that is not posted
        nothing through it."""
        with self._tx() as db:
            db.execute(
                "UPDATE task_runs SET ended_ts = ?, status = ?, summary = ?, error = ?"
                " WHERE id = ?",
                (now_ms(), status, summary, error, run_id),
            )
            return _queue(db, room_id, contents)

    def runs(self, task_id: str | None = None, status: str | None = None) -> list[TaskRun]:
        rows = self._db.execute(
            "SELECT * FROM task_runs WHERE (? IS NULL OR task_id = ?)"
            " AND (? IS NULL OR status = ?) ORDER BY id",
            (task_id, task_id, status, status),
        )
        return [TaskRun(**dict(r)) for r in rows]


def _insert_task(
    db: sqlite3.Connection, task_id: str, spec: TaskSpec, source: str, next_due: int | None
) -> None:
    db.execute(
        "INSERT INTO tasks (folder, prompt, kind, schedule, context, id, source, status,"
        " next_due, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
        (*_spec_values(spec), task_id, source, next_due, now_ms()),
    )


def _spec_values(spec: TaskSpec) -> tuple[str, ...]:
    return (spec.folder, spec.prompt, spec.kind, spec.schedule, spec.context)


def _start_run(db: sqlite3.Connection, task: TaskRow, slot: int) -> RunClaim | None:
    started = now_ms()
    cur = db.execute(
        "INSERT OR IGNORE INTO task_runs (task_id, slot, started_ts, status)"
        " VALUES (?, ?, ?, 'running')",
        (task.id, slot, started),
    )
    if not cur.rowcount:
        return None  # this slot already ran: moving next_due past it still stands
    assert cur.lastrowid is not None
    return RunClaim(cur.lastrowid, task, slot, started)


def _queue(
    db: sqlite3.Connection, room_id: str, contents: Sequence[dict[str, Any]]
) -> list[OutboxEntry]:
    entries = []
    for content in contents:
        txn_id = f"nanoclaw.{uuid.uuid4().hex}"
        cur = db.execute(
            "INSERT INTO outbox (txn_id, room_id, content, created_ts) VALUES (?, ?, ?, ?)",
            (txn_id, room_id, json.dumps(content), now_ms()),
        )
        assert cur.lastrowid is not None
        entries.append(OutboxEntry(cur.lastrowid, txn_id, room_id, content))
    return entries


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


def _task(row: sqlite3.Row) -> TaskRow:
    return TaskRow(
        id=row["id"],
        spec=TaskSpec(row["folder"], row["prompt"], row["kind"], row["schedule"], row["context"]),
        status=row["status"],
        source=row["source"],
        next_due=row["next_due"],
        run_requested=row["run_requested"],
    )
