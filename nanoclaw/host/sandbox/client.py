"""The host's side of the broker protocol (see sandboxd.py): run argv in a group's
sandbox, or ask what the policy grants.

Cancelling a call closes the connection, which makes the broker stop the unit.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nanoclaw.broker.workspace_usage import Usage, UsageReport

MAX_REPLY_BYTES = 160 * 1024 * 1024  # two capped outputs in base64, with room to spare


class SandboxError(Exception):
    """The broker refused the request or could not be reached; the text says which."""


@dataclass(frozen=True)
class GroupGrant:
    wall_seconds: int
    domains: tuple[str, ...]


@dataclass(frozen=True)
class Enforcement:
    """What the broker's start-up checks found: whether IPAddressDeny= holds, and whether
    the port filter keeps domain groups to the proxy's port."""

    ip_filtering: bool
    proxy_port_filter: bool
    pid_isolation: bool  # PrivatePIDs= (systemd 257 and later)


@dataclass(frozen=True)
class PolicySummary:
    proxy: tuple[str, int] | None
    groups: dict[str, GroupGrant]
    enforced: Enforcement | None = None  # None: a broker that does not say


@dataclass(frozen=True)
class SandboxResult:
    unit: str
    result: str  # systemd's Result=: success, exit-code, signal, timeout, oom-kill, ...
    exit_status: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


async def run_in_sandbox(
    socket_path: str,
    group: str,
    argv: Sequence[str],
    cwd: str = "/workspace/group",
    timeout: int = 60,
    stdin: bytes = b"",
    proxy_token: str | None = None,
) -> SandboxResult:
    request: dict[str, Any] = {
        "group": group,
        "argv": list(argv),
        "cwd": cwd,
        "timeout": timeout,
        "stdin": base64.b64encode(stdin).decode(),
    }
    if proxy_token is not None:
        request["proxy_token"] = proxy_token
    reply = await _ask(socket_path, request)
    return SandboxResult(
        unit=reply["unit"],
        result=reply["result"],
        exit_status=reply["exit_status"],
        signal=reply["signal"],
        stdout=base64.b64decode(reply["stdout"]),
        stderr=base64.b64decode(reply["stderr"]),
        truncated=bool(reply["truncated"]),
        duration_ms=int(reply["duration_ms"]),
    )


async def describe_policy(socket_path: str) -> PolicySummary:
    reply = await _ask(socket_path, {"describe": True})
    proxy = reply["proxy"]
    enforced = reply.get("enforced")
    return PolicySummary(
        proxy=None if proxy is None else (str(proxy["address"]), int(proxy["port"])),
        groups={
            name: GroupGrant(int(g["wall_seconds"]), tuple(map(str, g["domains"])))
            for name, g in reply["groups"].items()
        },
        enforced=None
        if enforced is None
        else Enforcement(
            bool(enforced["ip_filtering"]),
            bool(enforced["proxy_port_filter"]),
            bool(enforced.get("pid_isolation", False)),
        ),
    )


async def workspace_usage(socket_path: str) -> UsageReport:
    reply = await _ask(socket_path, {"usage": True})
    return UsageReport(
        free_bytes=int(reply["free_bytes"]),
        groups={
            name: Usage(int(g["bytes"]), bool(g["complete"])) for name, g in reply["groups"].items()
        },
    )


async def _ask(socket_path: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_REPLY_BYTES)
    except OSError as exc:
        raise SandboxError(f"cannot reach the sandbox broker at {socket_path}: {exc}") from exc
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
    if not line:
        raise SandboxError("the sandbox broker closed the connection without an answer")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise SandboxError(str(reply.get("error", "refused without a reason")))
    return reply
