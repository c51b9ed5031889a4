"""Benchmark: what the audit trail adds to one tool call on the host.

One command: `.venv/bin/python -m bench.audit_cost [--calls 2000]`. The real Audit wrapper,
secret filter and Store (SQLite in WAL mode with synchronous=FULL, on the data directory's
file system) around a tool whose handler reports one unit run, as the sandbox gateway does
for a bash call, with a command line of typical length (and a token in it, so redaction
has work to do). The same handler unwrapped is the control; calls alternate between the
two so that neither gets the quieter moments. The unit itself is not run: its cost is
bench/tool_latency.py's. Results go to bench/results/audit_cost.json and stdout. Target:
under 5 ms a call at p95 (a tool unit's start is about 70 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from claude_agent_sdk import tool

from bench.stats import summary
from nanoclaw.broker.protocol import RunResult
from nanoclaw.host import audit_call
from nanoclaw.host.audit import Audit
from nanoclaw.host.audit_args import SecretFilter
from nanoclaw.host.audit_call import AuditScope
from nanoclaw.host.host_tools import tool_result
from nanoclaw.host.store import Store

RESULTS = Path(__file__).parent / "results" / "audit_cost.json"
COMMAND = (
    "cd /workspace/group/project && git log --oneline -20 && "
    "curl -sS -H 'Authorization: Bearer ghp_0123456789abcdefghij0123456789abcdef' "
    "https://api.github.com/repos/owner/name/pulls?state=open | jq '.[].title'"
)
UNIT = RunResult(
    "nanoclaw-tool-bench-0123456789abcdef.service", "success", 0, None, b"x" * 2048, b"",
    False, 70, 60, "ab" * 32,
)  # fmt: skip


async def bash(args: dict[str, Any]) -> dict[str, Any]:
    audit_call.unit_ran(UNIT, [])
    return tool_result(UNIT.stdout.decode())


async def measure(calls: int, data: Path) -> dict[str, Any]:
    store = Store(data / "nanoclaw.db")
    audit = Audit(store, SecretFilter(["syt_bench_matrix_token"]), 90)
    plain = tool("bash", "bash", {"command": str})(bash)
    (audited,) = audit.wrap([plain], AuditScope("bench", "session"))
    timings: dict[str, list[float]] = {"plain": [], "audited": []}
    for turn in range(calls * 2 + 20):
        name, handler = ("plain", plain) if turn % 2 else ("audited", audited)
        began = time.perf_counter()
        await handler.handler({"command": COMMAND})
        if turn >= 20:  # the first calls warm SQLite and the regular expressions
            timings[name].append(time.perf_counter() - began)
    rows = store.audit_rows()
    assert len(rows) == calls + 10 and "ghp_" not in rows[-1].arguments, rows[-1]
    return {
        "plain": summary(timings["plain"]),
        "audited": summary(timings["audited"]),
        "rows": len(rows),
        "database_bytes": (data / "nanoclaw.db").stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.home()) as data:
        results = asyncio.run(measure(args.calls, Path(data)))
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
