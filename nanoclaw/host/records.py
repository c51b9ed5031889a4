"""The store's records: what a row of each table means to the rest of the host.

Types only, and no I/O: the events, the triggers and the scheduler use them without
importing the database (nanoclaw.host.store).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nanoclaw.host.attachment import Attachment


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
    attachment: Attachment | None = None  # a file, image, sound or video sent with it


@dataclass(frozen=True)
class WaitingEvent:
    """An encrypted event whose keys have not reached the bot yet, kept as it came."""

    event_id: str
    room_id: str
    sender: str
    arrived_ts: int
    source: dict[str, Any]
    notified_ts: int | None


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


def now_ms() -> int:
    return int(time.time() * 1000)
