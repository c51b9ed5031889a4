"""Task claims: one slot is taken once, by one claimer, and a run's end posts atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw.host.records import TaskSpec
from nanoclaw.host.store import Store

ROOM = "!room:localhost"
SPEC = TaskSpec("fam", "water the plants", "interval", "1h", "isolated")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite")


def test_two_claimers_of_one_slot_one_wins(tmp_path: Path, store: Store) -> None:
    task_id = store.add_task(SPEC, next_due=1000)
    other = Store(tmp_path / "db.sqlite")  # a second connection, as a second process has
    mine, theirs = store.due_tasks(2000)[0], other.due_tasks(2000)[0]
    won = store.claim(mine, 1000, 3600_000)
    lost = other.claim(theirs, 1000, 3600_000)
    assert won is not None and won.slot == 1000 and won.task.id == task_id
    assert lost is None
    assert [(r.slot, r.status) for r in store.runs(task_id)] == [(1000, "running")]
    assert store.task(task_id).next_due == 3600_000  # type: ignore[union-attr]


def test_a_slot_that_ran_is_never_claimed_again_even_if_next_due_goes_back(store: Store) -> None:
    task_id = store.add_task(SPEC, next_due=1000)
    assert store.claim(store.due_tasks(1000)[0], 1000, 5000) is not None
    store.update_task(task_id, next_due=1000)  # e.g. a stale write by another process
    assert store.claim(store.due_tasks(1000)[0], 1000, 5000) is None
    assert store.next_due() == 5000, "the schedule still moves past the slot"
    assert len(store.runs(task_id)) == 1


def test_paused_or_cancelled_tasks_are_not_claimed(store: Store) -> None:
    task_id = store.add_task(SPEC, next_due=1000)
    row = store.due_tasks(1000)[0]
    store.update_task(task_id, status="paused")
    assert store.due_tasks(1000) == [] and store.next_due() is None
    assert store.claim(row, 1000, 5000) is None, "a claim made from an old read loses"


def test_a_once_task_is_done_when_claimed(store: Store) -> None:
    task_id = store.add_task(TaskSpec("fam", "p", "once", "2026-01-01T00:00Z", "group"), 1000)
    assert store.claim(store.due_tasks(1000)[0], 1000, None) is not None
    assert store.task(task_id).status == "done"  # type: ignore[union-attr]
    assert store.next_due() is None


def test_an_operator_request_runs_outside_the_schedule(store: Store) -> None:
    task_id = store.add_task(SPEC, next_due=10_000)
    store.update_task(task_id, status="paused", run_requested=500)
    assert store.next_due() == 500
    claim = store.claim_requested(store.due_tasks(500)[0])
    assert claim is not None and claim.slot == 500
    task = store.task(task_id)
    assert task is not None and (task.run_requested, task.next_due) == (None, 10_000)


def test_finishing_a_run_queues_its_result_in_the_same_transaction(store: Store) -> None:
    store.add_task(SPEC, next_due=1000)
    claim = store.claim(store.due_tasks(1000)[0], 1000, 5000)
    assert claim is not None
    content = {"msgtype": "m.text", "body": "done"}
    entries = store.finish_run(claim.run_id, "ok", ROOM, [content], summary="done")
    assert [e.content for e in store.undelivered()] == [content] == [e.content for e in entries]
    (run,) = store.runs()
    assert (run.status, run.summary, run.error) == ("ok", "done", None)
    assert run.ended_ts is not None and run.ended_ts >= run.started_ts


def test_runtime_ids_are_numbers_and_declared_tasks_keep_theirs(store: Store) -> None:
    assert [store.add_task(SPEC, 1), store.add_task(SPEC, 1)] == ["1", "2"]
    store.declare_tasks([("daily", SPEC, 7000)])
    store.update_task("daily", status="paused")
    store.declare_tasks([("daily", SPEC, 9000)])  # a restart with the same declaration
    task = store.task("daily")
    assert task is not None and (task.status, task.next_due) == ("paused", 7000)
    changed = TaskSpec("fam", "water the roses", "interval", "1h", "isolated")
    store.declare_tasks([("daily", changed, 9000)])
    task = store.task("daily")
    assert task is not None and (task.spec, task.status, task.next_due) == (changed, "active", 9000)
    store.declare_tasks([])
    assert store.task("daily").status == "cancelled"  # type: ignore[union-attr]
    assert [t.status for t in store.tasks("fam") if t.source == "runtime"] == ["active"] * 2
    store.declare_tasks([("daily", changed, 9000)])
    assert store.task("daily").status == "active"  # type: ignore[union-attr]
