"""The scheduler: sleeps until the next task is due, claims its slot, hands the run over.

There is no polling loop. The scheduler sleeps until the earliest `next_due` in the store
and wakes early when tasks change: the agent's task tools call `wake()`, and `nanoclaw
tasks` (another process) sends a datagram to `DATA/scheduler.wake` after it commits.

A slot runs at most once. Before a run starts, its slot is claimed in SQLite (a
`task_runs` row with status `running`, and `next_due` moved past it, in one transaction;
see Store.claim), and the run's end is recorded with its result. What a restart does is
decided from that record: a run still `running` when the host starts was cut off by a
crash or a kill, so it is marked `interrupted`, its group's room is told, and its slot is
not run again (the agent may already have acted on it); the task goes on at its next
slot. Slots missed while the host was down are skipped but for the latest, which runs
once (see schedule.due_slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from nanoclaw.host.records import RunClaim, TaskRow, TaskRun
from nanoclaw.host.schedule import Schedule, due_slot
from nanoclaw.host.store import Store

log = logging.getLogger(__name__)

WAKE_SOCKET = "scheduler.wake"
# The loop's timer runs on the monotonic clock; a long sleep re-reads the wall clock now
# and then, so a suspend or a clock step delays no task by more than this.
MAX_SLEEP = 600.0


class Runner(Protocol):
    def start(self, claim: RunClaim) -> None:
        """Run a claimed slot; it must record the run's end with Store.finish_run."""

    async def interrupted(self, run: TaskRun) -> None:
        """Record and announce a run that a crash cut off."""


def to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def poke(data_dir: Path) -> bool:
    """Wake a running host's scheduler; False when none listens (it reads the store at start)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"wake", str(data_dir / WAKE_SOCKET))
        except OSError:
            return False
    return True


class Scheduler:
    def __init__(self, store: Store, tz: ZoneInfo, runner: Runner, data_dir: Path) -> None:
        self._store = store
        self._tz = tz
        self._runner = runner
        self._wake_path = data_dir / WAKE_SOCKET
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        for run in self._store.runs(status="running"):
            log.warning("run %d of task %s was interrupted", run.id, run.task_id)
            await self._runner.interrupted(run)
        async with self._listening():
            while True:
                self._woken.clear()
                self._start_due()
                due = self._store.next_due()
                delay = MAX_SLEEP if due is None else due / 1000 - time.time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(max(delay, 0.0), MAX_SLEEP)):
                        await self._woken.wait()

    def _start_due(self) -> None:
        now = round(time.time() * 1000)
        for task in self._store.due_tasks(now):
            claim = self._claim(task, now)
            if claim is not None:
                log.info(
                    "task %s starts, %d ms after its slot",
                    task.id,
                    claim.started_ts - claim.slot,
                    extra={"group": task.spec.folder, "task_id": task.id},
                )
                self._runner.start(claim)

    def _claim(self, task: TaskRow, now: int) -> RunClaim | None:
        if task.run_requested is not None and task.run_requested <= now:
            return self._store.claim_requested(task)
        assert task.next_due is not None  # due_tasks returned it
        schedule = Schedule(task.spec.kind, task.spec.schedule)  # type: ignore[arg-type]
        slot, following = due_slot(schedule, to_datetime(task.next_due), to_datetime(now), self._tz)
        return self._store.claim(task, to_ms(slot), None if following is None else to_ms(following))

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        """The wake socket for other processes; without it they wait for the next due time."""
        loop = asyncio.get_running_loop()
        transport = None
        self._wake_path.unlink(missing_ok=True)  # left by a host that did not stop cleanly
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Wakeup(self.wake), local_addr=str(self._wake_path), family=socket.AF_UNIX
            )
        except OSError as exc:
            log.warning(
                "no wake socket at %s (%s); `nanoclaw tasks` changes wait", self._wake_path, exc
            )
        try:
            yield
        finally:
            if transport is not None:
                transport.close()
                self._wake_path.unlink(missing_ok=True)


class _Wakeup(asyncio.DatagramProtocol):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._wake()
