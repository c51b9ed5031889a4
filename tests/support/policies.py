"""Policy files for the tests: good samples of every shape, and helpers to change one
key and to assert the refusal that names it."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.policy_file import parse_policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "policies" / "example.json"
SCHEMA = REPO / "policies" / "schema.json"
POLICY_PATH = "/etc/nanoclaw/policy.json"
GiB = 1024**3
DELETE = object()
# The reader's range of each limit, as documented.
LIMIT_BOUNDS = {
    "memory_max_bytes": (16 * 1024**2, 64 * GiB),
    "tasks_max": (8, 4096),
    "cpu_quota_percent": (1, 6400),
    "wall_seconds": (1, 86400),
    "output_bytes": (1024, 64 * 1024**2),
    "tmp_bytes": (1024**2, 64 * GiB),
}

MINIMAL: dict[str, Any] = {"version": 1, "data_dir": "/var/lib/nanoclaw"}

# Every key, with a $comment in every kind of object.
FULL: dict[str, Any] = {
    "$comment": "top",
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "protected_paths": ["/etc/nanoclaw", "/run/credentials"],
    "blocked_patterns": ["extra-pattern"],
    "defaults": {
        "$comment": "defaults",
        "limits": {"$comment": "limits", "tasks_max": 128, "wall_seconds": 600},
        "agent": {"$comment": "agent limits", "memory_max_bytes": 2 * GiB, "cpu_weight": 50},
    },
    "groups": {
        "$comment": "groups",
        "main": {
            "uid": 61000,
            "main": True,
            "mounts": [{"host": "/srv/project", "sandbox": "/workspace/project", "writable": True}],
            "egress": {
                "$comment": "egress",
                "domains": ["github.com", "*.githubusercontent.com"],
            },
            "read_only_paths": ["/nix/store/abc-ripgrep"],
            "limits": {"memory_max_bytes": GiB, "cpu_quota_percent": 50},
            "agent": {"$comment": "agent", "uid": 62000, "tasks_max": 512},
        },
        "family": {
            "$comment": "group",
            "uid": 61001,
            "agent": {"uid": 62001},
            "mounts": [
                {"$comment": "mount", "host": "/srv/photos", "sandbox": "/workspace/photos"},
                {"host": "/srv/inbox", "sandbox": "/workspace/inbox", "writable": True},
            ],
        },
        "ops-team": {"uid": 61002, "egress": {"cidrs": ["192.0.2.0/24", "2001:db8::/32"]}},
    },
}

# A group that reaches names only; used by the compiler's tests too.
DOMAINS_ONLY: dict[str, Any] = {
    "version": 1,
    "data_dir": "/srv/nanoclaw",
    "groups": {"web": {"uid": 62000, "egress": {"domains": ["example.org"]}}},
}

# A group whose tools come from the Nix store: its closure only, and on PATH.
STORE_TOOLS: dict[str, Any] = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "groups": {
        "tools": {
            "uid": 61000,
            "read_only_paths": ["/nix/store/abc-coreutils", "/nix/store/def-glibc"],
            "path": ["/nix/store/abc-coreutils/bin", "/usr/local//bin/"],
            "empty_paths": ["/nix/store"],
        }
    },
}

# Every policy these tests accept; each must also conform to policies/schema.json.
VALID_FIXTURES: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "full": FULL,
    "domains-only": DOMAINS_ONLY,
    "store-tools": STORE_TOOLS,
    "limits-at-bounds": {
        "version": 1,
        "data_dir": "/d",
        "defaults": {
            "limits": {
                "memory_max_bytes": 16 * 1024**2,
                "tasks_max": 8,
                "cpu_quota_percent": 1,
                "wall_seconds": 1,
                "output_bytes": 1024,
            }
        },
        "groups": {
            "g": {
                "uid": 2147483646,
                "limits": {
                    "memory_max_bytes": 64 * GiB,
                    "tasks_max": 4096,
                    "cpu_quota_percent": 6400,
                    "wall_seconds": 86400,
                    "output_bytes": 64 * 1024**2,
                },
            },
            "h": {"uid": 1000},
        },
    },
}


@pytest.fixture(name="tmp_path")
def outside_tmp() -> Iterator[Path]:  # imported by the test modules that need real trees
    """A directory of real files outside /tmp: the policy refuses mount sources in /tmp
    (every unit has its own), so trees made there could not be mounted at all."""
    base = Path("/var/cache/nanoclaw-tests")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path)


def at(data: dict[str, Any], location: tuple[str | int, ...], value: object) -> dict[str, Any]:
    """A deep copy of `data` with the item at `location` set (or removed, for DELETE)."""
    result = copy.deepcopy(data)
    target: Any = result
    for part in location[:-1]:
        target = target[part]
    if value is DELETE:
        del target[location[-1]]
    else:
        target[location[-1]] = value
    return result


def refusal(data: object, policy_path: str = POLICY_PATH) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_policy(data, policy_path)  # type: ignore[arg-type]
    return info.value


def refused(data: object, key: str, *fragments: str, policy_path: str = POLICY_PATH) -> None:
    error = refusal(data, policy_path)
    assert error.key == key, str(error)
    for fragment in fragments:
        assert fragment in error.reason, str(error)


def group_with(**entries: object) -> dict[str, Any]:
    """MINIMAL with one group "g" (uid 61000) plus `entries`."""
    return at(MINIMAL, ("groups",), {"g": {"uid": 61000, **entries}})


def mount(host: str, sandbox: str = "/workspace/m", **extra: object) -> dict[str, Any]:
    return group_with(mounts=[{"host": host, "sandbox": sandbox, **extra}])
