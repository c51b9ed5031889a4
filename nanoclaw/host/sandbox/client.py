"""The host's side of the broker's socket: one request, one answer, in the grammar of
nanoclaw.broker.protocol. Cancelling a call closes the connection, which makes the broker
stop the unit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from nanoclaw.broker.protocol import (
    DESCRIBE,
    MAIN_AGENT,
    MAX_REPLY_BYTES,
    USAGE,
    PolicySummary,
    ProtocolError,
    Refusal,
    RunRequest,
    RunResult,
    UsageReport,
    decode,
    encode,
)


class SandboxError(Exception):
    """The broker refused the request or could not be reached; the text says which.
    `summary` is the broker's current policy summary when it sent one along."""

    def __init__(self, message: str, summary: PolicySummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


async def run_in_sandbox(
    socket_path: str,
    group: str,
    argv: Sequence[str],
    cwd: str = "/workspace/group",
    timeout: int = 60,
    stdin: bytes = b"",
    proxy_token: str | None = None,
    policy: str | None = None,
    agent: str = MAIN_AGENT,
) -> RunResult:
    """Run argv in a fresh unit of `group` (narrowed for subagent `agent`); `timeout` is
    clamped to the group's bound. `policy` is the generation of the summary a proxy secret
    was granted by."""
    request = RunRequest(group, tuple(argv), cwd, timeout, stdin, proxy_token, policy, agent)
    return RunResult.from_wire(await _ask(socket_path, request.to_wire()))


async def describe_policy(socket_path: str) -> PolicySummary:
    return PolicySummary.from_wire(await _ask(socket_path, DESCRIBE))


async def workspace_usage(socket_path: str) -> UsageReport:
    return UsageReport.from_wire(await _ask(socket_path, USAGE))


async def _ask(socket_path: str, request: Mapping[str, Any]) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_REPLY_BYTES)
    except OSError as exc:
        raise SandboxError(f"cannot reach the sandbox broker at {socket_path}: {exc}") from exc
    try:
        writer.write(encode(request))
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The broker's next line, decoded; SandboxError for a refusal, or a garbled or no line."""
    line = await reader.readline()
    if not line:
        raise SandboxError("the sandbox broker closed the connection without an answer")
    try:
        reply = decode(line)
    except ProtocolError as exc:
        raise SandboxError(f"the sandbox broker's answer is garbled: {exc}") from None
    if not reply.get("ok"):
        refusal = Refusal.from_wire(reply)
        raise SandboxError(refusal.error, refusal.policy)
    return reply
