"""The tool call in progress, for the audit trail (nanoclaw.host.audit): what the sandbox
gateway and the host's refusals report into it.

Apart from nanoclaw.host.audit, which needs the Agent SDK, so that `nanoclaw exec` (which
runs through the gateway, in no tool call) starts without importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from nanoclaw.broker.protocol import RunResult
from nanoclaw.host.egress_proxy import Decision
from nanoclaw.host.records import now_ms


@dataclass
class AuditScope:
    """Whose calls a set of tools makes: the group, and the session, which the CLI names
    once it starts (nanoclaw.host.agent sets it)."""

    group: str
    session_id: str | None = None


@dataclass
class Call:
    scope: AuditScope
    agent: str
    tool: str
    arguments: str
    started_ms: int
    units: list[tuple[int, RunResult, list[Decision]]] = field(default_factory=list)
    refusal: str | None = None


CURRENT: ContextVar[Call | None] = ContextVar("nanoclaw_audit_call", default=None)


def unit_ran(result: RunResult, decisions: Sequence[Decision]) -> None:
    """The gateway ran a unit; it belongs to the call in progress, if any (`nanoclaw
    exec` and attachments put into the inbox are no tool calls)."""
    call = CURRENT.get()
    if call is not None:
        call.units.append((now_ms() - result.duration_ms, result, list(decisions)))


def refused(reason: str) -> None:
    """The call in progress was refused (by the host's rules or the broker): why."""
    call = CURRENT.get()
    if call is not None:
        call.refusal = reason
