"""The memory of systemd units, read INSIDE the booted machine (for bench/latency.py).

Stdlib only (run with the machine's python3 as `python3 /opt/nanoclaw-src/bench/unit_memory.py
UNIT-PATTERN...`). For every loaded unit matching a pattern, it prints, as one JSON line
after MARKER: its MainPID, systemd's MemoryCurrent (None where systemd has no memory
controller, as in a cgroup v1 hybrid machine) and every process of its cgroup, found in the
unified or the named systemd hierarchy, with its working directory (which tells whose CLI
it is) and its VmRSS and Pss (smaps_rollup) in KiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MARKER = "UNIT_MEMORY_RESULT "
HIERARCHIES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
NOT_SET = ("", "[not set]", str(2**64 - 1))


def units(patterns: list[str]) -> list[str]:
    listed = subprocess.run(
        ["systemctl", "list-units", "--plain", "--no-legend", "--state=active", *patterns],
        capture_output=True,
        text=True,
    ).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def show(unit: str) -> dict[str, str]:
    out = subprocess.run(
        ["systemctl", "show", unit, "-p", "MainPID,ControlGroup,MemoryCurrent"],
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cgroup_pids(cgroup: str) -> list[int]:
    for root in HIERARCHIES:
        base = Path(root + cgroup)
        if (base / "cgroup.procs").exists():
            pids = []
            for procs in sorted(base.rglob("cgroup.procs")):
                pids += [int(pid) for pid in procs.read_text().split()]
            return pids
    return []


def kib(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process(pid: int) -> dict[str, Any]:
    proc = Path(f"/proc/{pid}")
    try:
        name = (proc / "comm").read_text().strip()
        cwd = str((proc / "cwd").readlink())
    except OSError:
        name = cwd = "?"
    return {
        "pid": pid,
        "name": name,
        "cwd": cwd,
        "rss_kib": kib(proc / "status", "VmRSS"),
        "pss_kib": kib(proc / "smaps_rollup", "Pss"),
    }


def main() -> None:
    result = {}
    for unit in units(sys.argv[1:]):
        props = show(unit)
        current = props.get("MemoryCurrent", "")
        result[unit] = {
            "main_pid": int(props.get("MainPID") or 0),
            "memory_current": None if current in NOT_SET else int(current),
            "processes": [process(pid) for pid in cgroup_pids(props.get("ControlGroup", ""))],
        }
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
