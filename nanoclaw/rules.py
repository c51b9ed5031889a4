"""The policy's rules as data, for the NixOS module, which checks options against them at
evaluation time: group names, uids, blocked patterns, the broker's sandbox places, the
limits with their ranges, and the agent units' user, state and limits.
nixos-module/rules.json is this module's output, and a test fails when the two differ;
regenerate it with

    python -m nanoclaw.rules > nixos-module/rules.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from nanoclaw.broker import agent_unit, policy

# What each limit bounds, for the NixOS option's description: a new limit needs one here,
# and nothing on the Nix side.
LIMIT_TEXT = {
    "memory_max_bytes": "MemoryMax= of a tool unit, in bytes",
    "tasks_max": "TasksMax= of a tool unit",
    "cpu_quota_percent": "CPUQuota= of a tool unit, in percent of one CPU",
    "wall_seconds": "the longest a tool call may run, in seconds",
    "output_bytes": "bytes kept of a call's stdout and of its stderr",
    "tmp_bytes": "the size of each of a tool unit's own /tmp, /var/tmp and /dev/shm, in bytes",
}

AGENT_LIMIT_TEXT = {
    "memory_max_bytes": "MemoryMax= of an agent unit, in bytes; the CLI alone needs about 220 MiB",
    "tasks_max": "TasksMax= of an agent unit",
    "cpu_weight": "CPUWeight= of an agent unit, its share of CPU against the units beside it",
}


def rules() -> dict[str, Any]:
    """The rules, as plain JSON values. The group pattern is a POSIX extended regular
    expression as much as a Python one, so Nix's builtins.match reads it the same way."""
    for ranges, texts in (
        (policy.LIMIT_RANGES, LIMIT_TEXT),
        (policy.AGENT_LIMIT_RANGES, AGENT_LIMIT_TEXT),
    ):
        missing = [name for name, *_ in ranges if name not in texts]
        if missing:
            raise KeyError(f"nanoclaw.rules has no text for the limit(s) {missing}")
    return {
        "group": {
            "pattern": policy.GROUP_PATTERN,
            "max_length": policy.MAX_GROUP_NAME,
            "reserved": sorted(policy.RESERVED_GROUPS),
            "tool_user_prefix": policy.TOOL_USER_PREFIX,
            "agent_user_prefix": policy.AGENT_USER_PREFIX,
            "max_user_name": policy.MAX_USER_NAME,
        },
        "uid": {"min": policy.MIN_UID, "max": policy.MAX_UID, "nobody": policy.NOBODY_UID},
        "blocked_patterns": list(policy.DEFAULT_BLOCKED_PATTERNS),
        "env_file_prefix": policy.ENV_FILE_PREFIX,
        "workspace": policy.WORKSPACE,
        "reserved_sandbox": list(policy.RESERVED_SANDBOX),
        "limits": [
            {"name": name, "default": default, "min": low, "max": high, "text": LIMIT_TEXT[name]}
            for name, default, low, high in policy.LIMIT_RANGES
        ],
        "agent": {
            "state_root": agent_unit.STATE_ROOT,
            "limits": [
                {"name": name, "default": default, "min": low, "max": high, "text": text}
                for (name, default, low, high), text in zip(
                    policy.AGENT_LIMIT_RANGES, AGENT_LIMIT_TEXT.values(), strict=True
                )
            ],
        },
    }


def main() -> None:
    json.dump(rules(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
