"""The host's door to the broker: every sandboxed tool call of every group passes here.

It keeps the broker's policy summary from its start and acts on it: a group with egress
domains gets a fresh secret for the egress proxy, granted for the summary's domains and
revoked as soon as the call returns; the proxy's verdicts under that secret go with the
unit to the audit trail (nanoclaw.host.audit). Each call names the summary's generation; when the
policy has changed since (the broker is restarted with a new one), the broker refuses and
sends the new summary, and the call is made once more on that. So a call is one round
trip, and a secret is never granted for domains the policy no longer gives. The broker
clamps each call's time to the group's bound.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from nanoclaw.broker.protocol import MAIN_AGENT, PolicySummary, RunResult, UsageReport
from nanoclaw.host import audit_call
from nanoclaw.host.egress_proxy import Decision, EgressProxy
from nanoclaw.host.sandbox.client import (
    SandboxError,
    describe_policy,
    run_in_sandbox,
    workspace_usage,
)

log = logging.getLogger(__name__)


class SandboxGateway:
    def __init__(
        self, socket_path: str, timeout: int, proxy: EgressProxy | None, summary: PolicySummary
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.proxy = proxy
        self.summary = summary

    @classmethod
    async def open(
        cls, socket_path: str, timeout: int, egress_socket: str, proxy_required: bool = True
    ) -> SandboxGateway:
        """Reach the broker once, and start the egress proxy at `egress_socket` if any group
        has domains. Without `proxy_required`, a proxy already listening there (the host's,
        when an operator runs `nanoclaw exec`) means running without one."""
        summary = await describe_policy(socket_path)
        proxy = None
        if any(g.domains for g in summary.groups.values()):
            proxy = EgressProxy()
            try:
                # The host's RuntimeDirectory; made here for `nanoclaw exec` while it is down.
                os.makedirs(os.path.dirname(egress_socket), mode=0o755, exist_ok=True)
                await proxy.start(egress_socket)
            except OSError as exc:
                if proxy_required:
                    raise SandboxError(f"cannot start the egress proxy: {exc}") from exc
                log.warning("no egress proxy (%s): domains are unreachable from here", exc)
                proxy = None
        return cls(socket_path, timeout, proxy, summary)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()

    async def usage(self) -> UsageReport:
        return await workspace_usage(self.socket_path)

    async def run(
        self, group: str, argv: Sequence[str], stdin: bytes = b"", agent: str = MAIN_AGENT
    ) -> RunResult:
        """One tool call of `group`'s agent `agent` (MAIN_AGENT, or a subagent's name)."""
        decisions: list[Decision] = []
        try:
            result = await self._run(group, argv, stdin, agent, decisions)
        except SandboxError as refusal:
            if refusal.summary is None or refusal.summary.generation == self.summary.generation:
                raise
            log.info("the sandbox policy changed; asking again", extra={"group": group})
            self.summary = refusal.summary
            result = await self._run(group, argv, stdin, agent, decisions)
        audit_call.unit_ran(result, decisions)
        # The outcome only: argv and output are the model's and the tool's, never logged.
        context = {
            "group": group,
            "agent": agent,
            "tool_unit": result.unit,
            "duration_ms": result.duration_ms,
        }
        log.info("tool call: %s, exit %s", result.result, result.exit_status, extra=context)
        return result

    async def _run(
        self, group: str, argv: Sequence[str], stdin: bytes, agent: str, decisions: list[Decision]
    ) -> RunResult:
        summary = self.summary
        grant = summary.groups.get(group)
        domains = grant.domains if grant is not None else ()
        if domains and self.proxy is None:
            log.warning("group %s has egress domains, but no egress proxy runs here", group)
        if not domains or self.proxy is None:
            return await run_in_sandbox(
                self.socket_path, group, argv, timeout=self.timeout, stdin=stdin,
                policy=summary.generation, agent=agent,
            )  # fmt: skip
        with self.proxy.grant(group, domains, decisions) as token:
            return await run_in_sandbox(
                self.socket_path, group, argv, timeout=self.timeout, stdin=stdin,
                proxy_token=token, policy=summary.generation, agent=agent,
            )  # fmt: skip
