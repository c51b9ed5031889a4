"""The audit table (migration v005): writing rows, pruning old ones, and reading them, from
the host's connection or (for `nanoclaw audit`) a read-only one beside the running host."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AuditRow:
    call_id: str
    ts: int  # ms
    group: str
    session_id: str | None
    agent: str
    tool: str
    arguments: str  # JSON, from nanoclaw.host.audit_args
    outcome: str  # systemd's Result= for a unit; ok, refused or error for the call itself
    duration_ms: int
    unit: str | None = None
    properties_sha256: str | None = None
    exit_status: int | None = None
    signal: int | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    truncated: bool | None = None
    egress: str | None = None  # JSON list of the egress proxy's verdicts
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """One line of `nanoclaw audit --json`: the JSON columns as JSON, not as strings."""
        data = asdict(self)
        data["arguments"] = json.loads(self.arguments)
        data["egress"] = json.loads(self.egress) if self.egress is not None else []
        return data


_COLUMNS = tuple("group_folder" if f.name == "group" else f.name for f in fields(AuditRow))
_INSERT = f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


class AuditTable:
    """The store's audit rows; mixed into nanoclaw.host.store.Store."""

    _db: sqlite3.Connection

    def record_audit(self, rows: Iterable[AuditRow]) -> None:
        values = [tuple(getattr(row, f.name) for f in fields(AuditRow)) for row in rows]
        self._db.executemany(_INSERT, values)

    def prune_audit(self, before_ms: int) -> int:
        """Delete the rows older than `before_ms` (by the ts index); how many went."""
        return self._db.execute("DELETE FROM audit WHERE ts < ?", (before_ms,)).rowcount

    def audit_rows(
        self, group: str | None = None, since_ms: int = 0, limit: int = -1
    ) -> list[AuditRow]:
        return select_audit(self._db, group, since_ms, limit)


def select_audit(
    db: sqlite3.Connection, group: str | None, since_ms: int, limit: int = -1
) -> list[AuditRow]:
    """Rows from `since_ms` on, of one group or all; the newest `limit` (-1: all), oldest first."""
    where = "ts >= ?"
    values: list[object] = [since_ms]
    if group is not None:
        where += " AND group_folder = ?"
        values.append(group)
    columns = ", ".join(_COLUMNS)
    rows = db.execute(
        f"SELECT {columns} FROM (SELECT id, {columns} FROM audit WHERE {where}"
        " ORDER BY ts DESC, id DESC LIMIT ?) ORDER BY ts, id",
        (*values, limit),
    ).fetchall()
    return [_row(tuple(r)) for r in rows]


def open_read_only(path: Path) -> sqlite3.Connection:
    """The database without the right to change it, beside a running host (WAL mode)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _row(values: tuple[Any, ...]) -> AuditRow:
    data = dict(zip((f.name for f in fields(AuditRow)), values, strict=True))
    if data["truncated"] is not None:
        data["truncated"] = bool(data["truncated"])
    return AuditRow(**data)
