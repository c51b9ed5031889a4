"""The store's encrypted events that wait for their keys (nanoclaw.host.late_keys).

Each is kept raw, with when it arrived, in the same transaction as the sync batch that
brought it; it leaves the table in the same transaction that stores it decrypted as a
message, so it goes through the normal path exactly once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from nanoclaw.host.records import WaitingEvent

# Per room: anyone in a room can send events no key will ever open, and each is tried
# again after every sync. Past this many, the oldest are let go (and logged).
MAX_WAITING_PER_ROOM = 200


def hold(db: sqlite3.Connection, events: Sequence[WaitingEvent]) -> int:
    """Keep undecryptable events (inside the sync batch's transaction); one already
    decrypted and stored, or already kept, stays as it is. Returns how many of the oldest
    were let go to keep each room within MAX_WAITING_PER_ROOM."""
    for event in events:
        db.execute(
            "INSERT OR IGNORE INTO undecrypted (event_id, room_id, sender, arrived_ts, source)"
            " SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM messages WHERE event_id = ?)",
            (
                event.event_id,
                event.room_id,
                event.sender,
                event.arrived_ts,
                json.dumps(event.source),
                event.event_id,
            ),
        )
    dropped = 0
    for room_id in {event.room_id for event in events}:
        dropped += db.execute(
            "DELETE FROM undecrypted WHERE room_id = ? AND event_id NOT IN (SELECT event_id"
            " FROM undecrypted WHERE room_id = ? ORDER BY arrived_ts DESC, rowid DESC LIMIT ?)",
            (room_id, room_id, MAX_WAITING_PER_ROOM),
        ).rowcount
    return dropped


class WaitingTable:
    _db: sqlite3.Connection

    def waiting(self) -> list[WaitingEvent]:
        """Every event still waiting for its keys, in the order they arrived."""
        rows = self._db.execute("SELECT * FROM undecrypted ORDER BY arrived_ts, rowid")
        return [
            WaitingEvent(
                r["event_id"],
                r["room_id"],
                r["sender"],
                int(r["arrived_ts"]),
                json.loads(r["source"]),
                r["notified_ts"],
            )
            for r in rows
        ]

    def waiting_in(self, room_id: str | None = None) -> tuple[int, int | None]:
        """How many events wait (in `room_id`, or in all rooms), and when the oldest came."""
        row = self._db.execute(
            "SELECT COUNT(*), MIN(arrived_ts) FROM undecrypted WHERE ? IS NULL OR room_id = ?",
            (room_id, room_id),
        ).fetchone()
        return int(row[0]), None if row[1] is None else int(row[1])
