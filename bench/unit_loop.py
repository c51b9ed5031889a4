"""The timing loop of bench/tool_latency.py that runs INSIDE the booted machine.

Stdlib and nanoclaw only (the machine's python3 has nothing else), run as
`PYTHONPATH=/opt/nanoclaw-src python3 -m bench.unit_loop --calls N`. Each round makes, in
an order that rotates from round to round (so no series gets the quieter part of the
run), one call of each, timed with perf_counter:
- broker: `run_in_sandbox(socket, group, ["/bin/true"], timeout=10)`;
- broker_domain: the same for a group with egress domains, with a proxy secret: its unit
  joins the group's relay namespace, and the broker checks the relay is up each call (the
  first such call starts the relay: its cost is kept apart);
- systemd_run: plain `systemd-run --wait --pipe --quiet true`;
- sandboxed_systemd_run: the same systemd-run with `-p` for every setting of the unit the
  broker would start for this call (compile_unit on the machine's real policy, rendered by
  `explain()` as for `nanoclaw policy explain`), which is systemd's own cost of the sandbox
  with no broker involved.
Prints one JSON line after MARKER.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanoclaw.broker.compiler import compile_unit
from nanoclaw.broker.explain import explain
from nanoclaw.broker.policy_file import load_policy
from nanoclaw.broker.tool_request import ToolRequest
from nanoclaw.host.sandbox.client import run_in_sandbox

SOCKET = "/run/nanoclaw/sandbox.sock"
POLICY = Path("/etc/nanoclaw/policy.json")
SYSTEMD_RUN = ["systemd-run", "--wait", "--pipe", "--quiet"]
MARKER = "UNIT_LOOP_RESULT "
SECRET = "b" * 43  # the shape of the host's per-call secrets
# Not settings of the sandbox: the command is given as systemd-run's own argument.
NOT_SANDBOX = ("Description=", "ExecStart=")


def sandbox_properties(group: str) -> list[str]:
    """`-p` arguments for the unit the broker would start for ["/bin/true"] in `group`."""
    request = ToolRequest(group, ("/bin/true",), "/workspace/group", 10)
    plan = compile_unit(load_policy(POLICY), request, "bench0000")
    lines = explain(plan).splitlines()[1:]  # the first is a comment naming the unit
    return [f"-p{line}" for line in lines if not line.startswith(NOT_SANDBOX)]


def timed_process(argv: list[str]) -> Callable[[], float]:
    def call() -> float:
        start = time.perf_counter()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed with {done.returncode}: {done.stderr!r}")
        return elapsed

    return call


def measure(calls: int, warmup: int, group: str, domain_group: str) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    reported_ms: list[int] = []

    def call_broker(name: str, secret: str | None) -> float:
        start = time.perf_counter()
        result = loop.run_until_complete(
            run_in_sandbox(SOCKET, name, ["/bin/true"], timeout=10, proxy_token=secret)
        )
        elapsed = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"broker call for {name} failed: {result}")
        if name == group:
            reported_ms.append(result.duration_ms)
        return elapsed

    def broker() -> float:
        return call_broker(group, None)

    def broker_domain() -> float:
        return call_broker(domain_group, SECRET)

    properties = sandbox_properties(group)
    # Check that the translated settings do what the broker's unit does, once.
    check = subprocess.run(
        [*SYSTEMD_RUN, *properties, "/bin/sh", "-c", "id -u; pwd; ls /var/lib/nanoclaw"],
        capture_output=True,
        text=True,
        check=False,
    )
    series: dict[str, Callable[[], float]] = {
        "broker_s": broker,
        "broker_domain_s": broker_domain,
        "systemd_run_s": timed_process([*SYSTEMD_RUN, "true"]),
        "sandboxed_systemd_run_s": timed_process([*SYSTEMD_RUN, *properties, "/bin/true"]),
    }
    names = list(series)
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        # The first call starts the socket-activated broker: its cold start, kept apart.
        first = broker()
        first_domain = broker_domain()  # and the relay's start
        for _ in range(warmup):
            for call in series.values():
                call()
        reported_ms.clear()
        for index in range(calls):
            for offset in range(len(names)):
                name = names[(index + offset) % len(names)]
                samples[name].append(series[name]())
    finally:
        loop.close()
    return {
        "broker_first_call_s": first,
        "broker_domain_first_call_s": first_domain,
        "broker_reported_duration_ms": reported_ms,
        **samples,
        "sandbox_properties": properties,
        "sandbox_check": check.stdout + check.stderr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--group", default="alpha")
    parser.add_argument("--domain-group", default="web")
    args = parser.parse_args()
    result = measure(args.calls, args.warmup, args.group, args.domain_group)
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
