"""Benchmark: scheduler lateness, the time from a task's due slot to its run starting.

One command: `.venv/bin/python -m bench.scheduler_lateness [--firings 250] [--groups 10]`.
It runs the real Scheduler against the real Store (SQLite in WAL mode with
synchronous=FULL, so every claim is on disk before the run starts) with one interval task
due every second in each of 10 groups, all on the same second: each wake claims 10 slots.
The agent run is a stand-in callable that records when it was called and finishes the
run in the store; the model's latency is not the scheduler's, and message-to-reply
latency is measured by bench/latency.py. Two numbers per firing:
- claimed: the run's recorded start (its claim committed) minus its slot;
- started: the moment the stand-in was called minus its slot.
Results go to bench/results/scheduler_lateness.json and stdout. Targets: p50 under
100 ms, max under 1 s (NanoClaw polls every 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.stats import summary
from nanoclaw.host.records import RunClaim, TaskRun, TaskSpec, now_ms
from nanoclaw.host.scheduler import Scheduler
from nanoclaw.host.store import Store

RESULTS = Path(__file__).parent / "results" / "scheduler_lateness.json"


class StandInRunner:
    """Records lateness and ends each run as the router would, without a model."""

    def __init__(self, store: Store, wanted: int) -> None:
        self.store = store
        self.claimed: list[float] = []
        self.started: list[float] = []
        self.enough = asyncio.Event()
        self._wanted = wanted
        self._runs: set[asyncio.Task[None]] = set()

    def start(self, claim: RunClaim) -> None:
        self.started.append((time.time() * 1000 - claim.slot) / 1000)
        self.claimed.append((claim.started_ts - claim.slot) / 1000)
        run = asyncio.create_task(self._finish(claim))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        if len(self.started) >= self._wanted:
            self.enough.set()

    async def _finish(self, claim: RunClaim) -> None:
        await asyncio.sleep(0)
        self.store.finish_run(claim.run_id, "ok", "!bench:localhost", [], summary="stand-in")

    async def interrupted(self, run: TaskRun) -> None:
        raise AssertionError("a fresh store has no interrupted runs")


async def measure(firings: int, groups: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="nanoclaw-bench-") as tmp:
        store = Store(Path(tmp) / "nanoclaw.db")
        first = (now_ms() // 1000 + 2) * 1000  # a whole second, after the set-up
        for index in range(groups):
            store.add_task(TaskSpec(f"group{index}", "tick", "interval", "1s", "isolated"), first)
        runner = StandInRunner(store, firings)
        scheduler = Scheduler(store, ZoneInfo("UTC"), runner, Path(tmp))
        loop = asyncio.create_task(scheduler.run())
        await asyncio.wait_for(runner.enough.wait(), firings / groups + 30)
        loop.cancel()
        runs = store.runs()
        store.close()
    slots_per_task = {(r.task_id, r.slot) for r in runs}
    assert len(slots_per_task) == len(runs), "no slot ran twice"
    return {
        "firings": len(runner.started),
        "groups": groups,
        "tasks_due_every_seconds": 1,
        "claimed": summary(runner.claimed),
        "started": summary(runner.started),
        "targets": {"p50_ms": 100, "max_ms": 1000},
        "machine": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--firings", type=int, default=250)
    parser.add_argument("--groups", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(measure(args.firings, args.groups))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
