"""The scheduler loop against the real store: it sleeps until a slot, wakes on changes, and
never runs a slot twice across a restart (the run itself is a stand-in here)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from nanoclaw.host.records import RunClaim, TaskRun, TaskSpec, now_ms
from nanoclaw.host.scheduler import Scheduler, poke
from nanoclaw.host.store import Store

SPEC = TaskSpec("fam", "tick", "interval", "1h", "isolated")


class Recorder:
    def __init__(self) -> None:
        self.claims: list[RunClaim] = []
        self.interrupted_runs: list[TaskRun] = []
        self.started = asyncio.Event()

    def start(self, claim: RunClaim) -> None:
        self.claims.append(claim)
        self.started.set()

    async def interrupted(self, run: TaskRun) -> None:
        self.interrupted_runs.append(run)


async def running(
    store: Store, recorder: Recorder, data: Path
) -> tuple[Scheduler, asyncio.Task[None]]:
    scheduler = Scheduler(store, ZoneInfo("UTC"), recorder, data)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.05)  # asleep: nothing is due
    return scheduler, task


async def test_a_task_added_while_asleep_starts_on_time(tmp_path: Path) -> None:
    store, recorder = Store(tmp_path / "db"), Recorder()
    scheduler, loop = await running(store, recorder, tmp_path)
    due = now_ms() + 300
    store.add_task(SPEC, due)
    scheduler.wake()
    await asyncio.wait_for(recorder.started.wait(), 5)
    loop.cancel()
    (claim,) = recorder.claims
    assert claim.slot == due and 0 <= claim.started_ts - due < 1000
    assert store.task(claim.task.id).next_due == due + 3600_000  # type: ignore[union-attr]


async def test_another_process_wakes_it_through_the_socket(tmp_path: Path) -> None:
    store, recorder = Store(tmp_path / "db"), Recorder()
    _, loop = await running(store, recorder, tmp_path)
    operator = Store(tmp_path / "db")  # as `nanoclaw tasks run` does, from its own process
    task_id = operator.add_task(SPEC, now_ms() + 3600_000)
    operator.update_task(task_id, run_requested=now_ms())
    started = time.monotonic()
    assert poke(tmp_path)
    await asyncio.wait_for(recorder.started.wait(), 5)
    loop.cancel()
    assert time.monotonic() - started < 1
    assert not poke(tmp_path / "elsewhere"), "no host there: the change waits for its start"


async def test_a_run_cut_off_by_a_crash_is_reported_and_its_slot_not_run_again(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db")
    slot = now_ms() - 500
    store.add_task(SPEC, slot)
    crashed = store.claim(store.due_tasks(slot)[0], slot, slot + 3600_000)
    assert crashed is not None  # ... and then the host died: no finish_run
    recorder = Recorder()
    _, loop = await running(store, recorder, tmp_path)
    loop.cancel()
    assert [r.id for r in recorder.interrupted_runs] == [crashed.run_id]
    assert recorder.claims == [], "the interrupted slot is not claimed again"
