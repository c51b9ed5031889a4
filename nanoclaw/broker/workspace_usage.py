"""How much each group's workspace holds, for `nanoclaw doctor` and /status.

A workspace has no size bound of its own: nanoclaw sets up no project quotas, so every
group's workspace shares the data directory's file system, and a group that fills it
stops every other group's writes (and the host's) too. What is bounded per unit is its
memory and its scratch places (limits.memory_max_bytes, limits.tmp_bytes). Until a
per-group bound exists, the broker, the only side that may read workspaces, measures them
on request: blocks allocated, walked without following a link and bounded in entries, so
a workspace of millions of files answers quickly with "at least".
"""

from __future__ import annotations

import os
import posixpath

from nanoclaw.broker.nofollow_walk import walk
from nanoclaw.broker.policy import WORKSPACES, Policy
from nanoclaw.broker.protocol import Usage, UsageReport

MAX_ENTRIES = 200_000
BLOCK = 512  # st_blocks counts 512-byte blocks whatever the file system's block size


def measure(path: str) -> Usage:
    total = 0

    def visit(entry: os.DirEntry[str], relative: str, depth: int) -> bool:
        nonlocal total
        total += entry.stat(follow_symlinks=False).st_blocks * BLOCK
        return True

    complete = walk(path, visit, MAX_ENTRIES)
    return Usage(total, complete)


def report(policy: Policy) -> UsageReport:
    """OSError when the data directory is missing."""
    workspaces = posixpath.join(policy.data_dir, WORKSPACES)
    stats = os.statvfs(policy.data_dir)
    return UsageReport(
        free_bytes=stats.f_bavail * stats.f_frsize,
        groups={name: measure(posixpath.join(workspaces, name)) for name in policy.groups},
    )


def shown(usage: Usage) -> str:
    return ("" if usage.complete else "at least ") + size(usage.bytes)


def size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    units = ("KiB", "MiB", "GiB", "TiB")
    value, index = count / 1024, 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.1f} {units[index]}"
