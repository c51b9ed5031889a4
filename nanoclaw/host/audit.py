"""The audit trail: every tool call of every group and agent, in the store and the journal.

Each group's tools are wrapped once, with the scope they are called in (group and
session); the agent that makes a call (the group's own, or one of its subagents) is the
one nanoclaw.host.swarm names for it in CALLER. A call is open while its handler runs; the
sandbox gateway reports each unit it runs for the current call (with the egress proxy's
verdicts under that unit's secret), and a refused call says why. When the handler
returns, the call becomes rows: one per unit it ran, and one for its own outcome when it
ran no unit, or was refused or failed after its units. Host tools that start no unit
(send_message, write_memory, the task tools) are therefore one row each. What is kept of
the arguments is nanoclaw.host.audit_args.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from claude_agent_sdk import SdkMcpTool

from nanoclaw.broker.protocol import RunResult
from nanoclaw.host.audit_args import SecretFilter
from nanoclaw.host.audit_call import CURRENT, AuditScope, Call
from nanoclaw.host.audit_table import AuditRow
from nanoclaw.host.egress_proxy import Decision
from nanoclaw.host.records import now_ms
from nanoclaw.host.swarm import CALLER

log = logging.getLogger("nanoclaw.audit")

MAX_EGRESS_DECISIONS = 50  # per unit; more are counted, not listed
DAY_MS = 86_400_000
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AuditSink(Protocol):
    def record_audit(self, rows: Sequence[AuditRow]) -> None: ...

    def prune_audit(self, before_ms: int) -> int: ...


class Audit:
    def __init__(self, sink: AuditSink, secrets_filter: SecretFilter, retention_days: int) -> None:
        self._sink = sink
        self._filter = secrets_filter
        self._retention_ms = retention_days * DAY_MS

    def wrap(self, tools: Sequence[SdkMcpTool[Any]], scope: AuditScope) -> list[SdkMcpTool[Any]]:
        """The same tools, each call of which is recorded under `scope`."""
        return [replace(t, handler=partial(self._call, scope, t.name, t.handler)) for t in tools]

    def prune(self) -> None:
        gone = self._sink.prune_audit(now_ms() - self._retention_ms)
        if gone:
            log.info("pruned %d audit rows older than %d days", gone, self._retention_ms // DAY_MS)

    async def _call(
        self, scope: AuditScope, tool: str, handler: Handler, args: dict[str, Any]
    ) -> dict[str, Any]:
        call = Call(scope, CALLER.get(), tool, self._filter.arguments(args), now_ms())
        began = time.monotonic()
        token = CURRENT.set(call)
        error = None
        try:
            return await handler(args)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            CURRENT.reset(token)
            self._record(call, int((time.monotonic() - began) * 1000), error)

    def _record(self, call: Call, duration_ms: int, error: str | None) -> None:
        scope = call.scope
        base = AuditRow(
            secrets.token_hex(8), call.started_ms, scope.group, scope.session_id, call.agent,
            call.tool, call.arguments, "ok", duration_ms,
        )  # fmt: skip
        rows = [_unit_row(base, started, result, found) for started, result, found in call.units]
        if error is not None:
            rows.append(replace(base, outcome="error", reason=self._filter.reason(error)))
        elif call.refusal is not None:
            rows.append(replace(base, outcome="refused", reason=self._filter.reason(call.refusal)))
        elif not rows:
            rows.append(base)
        try:
            self._sink.record_audit(rows)
        except Exception:  # the call has happened; its journal lines below still say so
            log.exception("could not store the audit rows of a %s call", call.tool)
        for row in rows:
            log.info("tool call %s: %s", row.tool, row.outcome, extra=journal_fields(row))


def _unit_row(base: AuditRow, started: int, result: RunResult, found: list[Decision]) -> AuditRow:
    verdicts: list[dict[str, object]] = [d.to_json() for d in found[:MAX_EGRESS_DECISIONS]]
    if len(found) > MAX_EGRESS_DECISIONS:
        verdicts.append({"omitted": len(found) - MAX_EGRESS_DECISIONS})
    return replace(
        base,
        ts=started,
        outcome=result.result,
        duration_ms=result.duration_ms,
        unit=result.unit,
        properties_sha256=result.properties_sha256,
        exit_status=result.exit_status,
        signal=result.signal,
        stdout_bytes=len(result.stdout),
        stderr_bytes=len(result.stderr),
        truncated=result.truncated,
        egress=json.dumps(verdicts) if verdicts else None,
    )


def journal_fields(row: AuditRow) -> dict[str, object]:
    """The `extra` of a row's log line: its set fields (nanoclaw.host.journal names them)."""
    values = {
        "group": row.group,
        "tool_call": row.call_id,
        "session_id": row.session_id,
        "agent": row.agent,
        "tool": row.tool,
        "arguments": row.arguments,
        "outcome": row.outcome,
        "duration_ms": row.duration_ms,
        "tool_unit": row.unit,
        "properties_sha256": row.properties_sha256,
        "exit_status": row.exit_status,
        "signal": row.signal,
        "stdout_bytes": row.stdout_bytes,
        "stderr_bytes": row.stderr_bytes,
        "truncated": None if row.truncated is None else int(row.truncated),
        "egress": row.egress,
        "reason": row.reason,
    }
    return {key: value for key, value in values.items() if value is not None}
