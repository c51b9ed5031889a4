"""The host's door to the broker: every sandboxed tool call of every group passes here.

Per call it asks the broker what the policy grants the group now (the policy is the
broker's, and may change while the host runs), so the call's time is clamped to the
group's bound instead of being refused, and a group with egress domains gets a fresh
secret for the egress proxy that is revoked as soon as the call returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nanoclaw.broker.workspace_usage import UsageReport
from nanoclaw.host.egress_proxy import EgressProxy
from nanoclaw.host.sandbox.client import (
    SandboxError,
    SandboxResult,
    describe_policy,
    run_in_sandbox,
    workspace_usage,
)

log = logging.getLogger(__name__)


class SandboxGateway:
    def __init__(self, socket_path: str, timeout: int, proxy: EgressProxy | None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.proxy = proxy

    @classmethod
    async def open(
        cls, socket_path: str, timeout: int, proxy_required: bool = True
    ) -> SandboxGateway:
        """Reach the broker once, and start the egress proxy if any group has domains.
        Without `proxy_required`, a proxy address already taken (by the host, when an
        operator runs `nanoclaw exec`) means running without one."""
        summary = await describe_policy(socket_path)
        proxy = None
        if summary.proxy is not None and any(g.domains for g in summary.groups.values()):
            proxy = EgressProxy()
            try:
                await proxy.start(*summary.proxy)
            except OSError as exc:
                if proxy_required:
                    raise SandboxError(f"cannot start the egress proxy: {exc}") from exc
                log.warning("no egress proxy (%s): domains are unreachable from here", exc)
                proxy = None
        return cls(socket_path, timeout, proxy)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()

    async def usage(self) -> UsageReport:
        return await workspace_usage(self.socket_path)

    async def run(self, group: str, argv: Sequence[str], stdin: bytes = b"") -> SandboxResult:
        grant = (await describe_policy(self.socket_path)).groups.get(group)
        if grant is None:
            raise SandboxError(f"group {group} has no entry in the sandbox policy")
        timeout = min(self.timeout, grant.wall_seconds)
        if grant.domains and self.proxy is None:
            log.warning("group %s has egress domains, but no egress proxy runs here", group)
        if not grant.domains or self.proxy is None:
            result = await run_in_sandbox(
                self.socket_path, group, argv, timeout=timeout, stdin=stdin
            )
        else:
            with self.proxy.grant(group, grant.domains) as token:
                result = await run_in_sandbox(
                    self.socket_path, group, argv, timeout=timeout, stdin=stdin, proxy_token=token
                )
        # The outcome only: argv and output are the model's and the tool's, never logged.
        context = {"group": group, "tool_unit": result.unit, "duration_ms": result.duration_ms}
        log.info("tool call: %s, exit %s", result.result, result.exit_status, extra=context)
        return result
