"""The scheduled tasks and their runs in the store: a part of Store (nanoclaw.host.store),
kept apart for its size. A slot is claimed in the same transaction that moves the task's
next due time, and a run's end is recorded in the same transaction that queues what it
posts."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from nanoclaw.host.records import OutboxEntry, RunClaim, TaskRow, TaskRun, TaskSpec, now_ms

_TASK_FIELDS = frozenset(
    ("prompt", "kind", "schedule", "context", "status", "next_due", "run_requested")
)


class TaskTable:
    _db: sqlite3.Connection
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]

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
            return queue_replies(db, room_id, contents)

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


def queue_replies(
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


def _task(row: sqlite3.Row) -> TaskRow:
    return TaskRow(
        id=row["id"],
        spec=TaskSpec(row["folder"], row["prompt"], row["kind"], row["schedule"], row["context"]),
        status=row["status"],
        source=row["source"],
        next_due=row["next_due"],
        run_requested=row["run_requested"],
    )
