"""nanoclaw-sandboxd: the root broker that runs one command in a fresh transient unit.

Why it exists: starting transient units needs polkit's manage-units, which no rule can
limit to safe ExecStart= or User= values; granting it to the host would make the host
root. So the host stays unprivileged and asks this broker, over a Unix socket that only
group `nanoclaw` can open, to run argv for a group. Every unit property comes from the
root-owned policy file through the compiler (nanoclaw.broker.compiler); a request names
only the group, argv, working directory, stdin, the time it wants (clamped to the group's
bound) and the host's proxy secret. The requests and answers are those of
nanoclaw.broker.protocol; who may ask what is nanoclaw.broker.clients; running the planned
unit is nanoclaw.broker.units; the way out for groups with domains is
nanoclaw.broker.relay. It also runs each group's agent runtime in a unit of its own for as
long as the host's session lasts (nanoclaw.broker.agent_runs).

It imports nothing but this package, D-Bus and the standard library (tests/test_layout.py
holds that).
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import pwd
import secrets
import socket
import sys
from collections.abc import Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any

from nanoclaw.broker import workspace_usage
from nanoclaw.broker.agent_runs import AgentRuns, find_agent_cli
from nanoclaw.broker.clients import Clients, NotAllowed
from nanoclaw.broker.compiler import EGRESS, MODEL, PRIVATE_PIDS_SINCE, compile_unit
from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.ip_probe import ProbeFailed, ip_filtering_enforced
from nanoclaw.broker.mount_covers import TooManyCovers, scan_mount
from nanoclaw.broker.policy import GroupPolicy, Policy, UnknownGroup
from nanoclaw.broker.policy_file import load_policy
from nanoclaw.broker.protocol import (
    DEFAULT_CREDENTIAL_SOCKET,
    DEFAULT_EGRESS_SOCKET,
    DESCRIBE,
    MAX_REQUEST_BYTES,
    USAGE,
    AgentRequest,
    Enforcement,
    GroupGrant,
    PolicySummary,
    ProtocolError,
    Refusal,
    RunRequest,
    RunResult,
    decode,
    encode,
)
from nanoclaw.broker.relay import (
    SOCKET_PROXYD_PLACES,
    Relays,
    RelayUnavailable,
    find_socket_proxyd,
)
from nanoclaw.broker.systemd_bus import BusError, Systemd
from nanoclaw.broker.tool_request import RequestError, ToolRequest
from nanoclaw.broker.units import run_unit

log = logging.getLogger("nanoclaw.broker.sandboxd")

SD_LISTEN_FDS_START = 3
AGENT_UNITS = "nanoclaw-agent-*.service"


class Refused(Exception):
    """The request is not allowed; the message goes back to the client, and the policy's
    summary with it where the client can act on that."""

    def __init__(self, message: str, summary: PolicySummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def summarize(policy: Policy, enforced: Enforcement | None = None) -> PolicySummary:
    """What the host needs to grant proxy secrets and run its egress proxy, and no more."""
    groups = {
        name: GroupGrant(g.limits.wall_seconds, g.egress.domains, g.agent is not None)
        for name, g in policy.groups.items()
    }
    return PolicySummary.of(groups, enforced)


class Broker:
    def __init__(
        self,
        policy: Policy,
        systemd: Systemd,
        client_gid: int,
        enforced: Enforcement,
        relays: Relays,
        agents: AgentRuns,
        host_unit: str = "nanoclaw.service",
    ) -> None:
        self.policy = policy
        self.systemd = systemd
        self.enforced = enforced
        self.relays = relays
        self.agents = agents
        self.summary = summarize(policy, enforced)
        self.clients = Clients(client_gid, systemd, host_unit)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        reply: dict[str, Any]
        try:
            peer = self.clients.admit(sock)
            try:
                line = await reader.readline()
            except ValueError:  # the stream's limit, MAX_REQUEST_BYTES, was passed
                raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes") from None
            data = decode(line)
            if data == DESCRIBE:
                reply = self.summary.to_wire()
            elif data == USAGE:
                try:
                    measured = await asyncio.to_thread(workspace_usage.report, self.policy)
                except OSError as error:
                    raise Refused(f"cannot measure the workspaces: {error}") from None
                reply = measured.to_wire()
            else:
                await self.clients.may_start_units(sock, peer)
                if "agent" in data:
                    reply = await self.agents.run(AgentRequest.from_wire(data), reader, writer)
                else:
                    reply = (await self.run(RunRequest.from_wire(data), reader)).to_wire()
        except Refused as refusal:
            reply = Refusal(str(refusal), refusal.summary).to_wire()
            log.warning("refused: %s", refusal)
        except (NotAllowed, ProtocolError, RequestError, BusError, ConfigError) as exc:
            reply = Refusal(str(exc)).to_wire()
            log.warning("refused: %s", exc)
        except Exception:  # a bug of ours: the client hears of it instead of hanging
            log.exception("failed to handle a request")
            reply = Refusal("the broker failed; see its journal").to_wire()
        with suppress(ConnectionError):
            writer.write(encode(reply))
            await writer.drain()
        writer.close()

    async def run(self, request: RunRequest, client: asyncio.StreamReader) -> RunResult:
        if request.policy is not None and request.policy != self.summary.generation:
            # The client's proxy secret was granted for domains the policy may no longer
            # give: it asks again with the summary sent along.
            raise Refused("the sandbox policy has changed; ask again", self.summary)
        try:
            group = self.policy.group(request.group)
        except UnknownGroup as unknown:
            raise Refused(str(unknown), self.summary) from None
        self._check_enforcement(group)
        # The owner may have changed a path since the policy was read; no tool can change
        # one between this check and the bind (nanoclaw.broker.mount_sources says why).
        try:
            self.policy.check_binds(group, self.policy.tool_users())
        except ConfigError as error:
            raise Refused(f"{error}; refusing the mount") from None
        if group.egress.domains:
            try:
                await self.relays.ensure(group.name)
            except RelayUnavailable as error:
                raise Refused(str(error)) from None
        timeout = min(request.timeout, group.limits.wall_seconds)
        plan = compile_unit(
            self.policy,
            ToolRequest(
                group.name, request.argv, request.cwd, timeout, request.proxy_token, request.agent
            ),
            secrets.token_hex(8),
            covers=_covers(group, self.policy.blocked_patterns),
            private_pids=self.enforced.pid_isolation,
        )
        ran = await run_unit(
            self.systemd, plan, request.stdin, group.limits.output_bytes, timeout, client.read(1)
        )
        killed = ran.outcome.exit_code in (2, 3)  # CLD_KILLED, CLD_DUMPED
        return RunResult(
            unit=plan.name,
            result=ran.outcome.result,
            exit_status=None if killed else ran.outcome.exit_status,
            signal=ran.outcome.exit_status if killed else None,
            stdout=ran.stdout,
            stderr=ran.stderr,
            truncated=ran.truncated,
            duration_ms=ran.duration_ms,
            timeout=timeout,
            properties_sha256=ran.properties_sha256,
        )

    def _check_enforcement(self, group: GroupPolicy) -> None:
        if group.name in self.enforced.refused:
            raise Refused(f"group {group.name}: {self.enforced.refused[group.name]}")
        try:
            pwd.getpwuid(group.uid)
            grp.getgrgid(group.uid)
        except KeyError:
            raise Refused(
                f"group {group.name}: uid/gid {group.uid} has no user or group entry, which "
                f"systemd needs; create both (sysusers: u nanoclaw-tool-{group.name} "
                f"{group.uid}:{group.uid})"
            ) from None


def _covers(group: GroupPolicy, blocked_patterns: tuple[str, ...]) -> tuple[str, ...]:
    covers: list[str] = []
    for mount in group.mounts:
        try:
            scan = scan_mount(mount, blocked_patterns)
        except TooManyCovers as error:
            raise Refused(f"group {group.name}: {error}") from None
        except OSError as error:  # what cannot be seen cannot be hidden: refuse
            raise Refused(
                f"group {group.name}: cannot look inside {mount.host} for what tools must "
                f"not see: {error}"
            ) from None
        if not scan.complete:
            log.warning("walked only part of %s for entries to hide from tools", mount.host)
        covers.extend(scan.covers)
    return tuple(covers)


def refusals(
    policy: Policy, ip_filtering: bool, socket_proxyd: str | None, given: str | None = None
) -> dict[str, str]:
    """The groups this machine cannot confine as their policy says, and why; `given` is
    where the operator said socket-proxyd is."""
    refused = {}
    for name, group in policy.groups.items():
        if group.egress.cidrs and not ip_filtering:
            refused[name] = (
                "its egress cidrs need IP filtering, which this machine does not enforce "
                "(no cgroup BPF): refusing rather than running it unfiltered"
            )
        elif group.egress.domains and socket_proxyd is None:
            refused[name] = (
                "its egress domains need systemd-socket-proxyd, which this machine lacks "
                f"(looked at {given or ', '.join(SOCKET_PROXYD_PLACES)}; name it with "
                "--socket-proxyd)"
            )
    return refused


async def _holds(check: Coroutine[Any, Any, bool]) -> bool:
    """The answer of a start-up check; a check that cannot answer counts as "no"."""
    try:
        return await check
    except (ProbeFailed, BusError) as error:
        log.warning("%s", error)
        return False


def listening_socket(path: str | None) -> socket.socket:
    """The socket systemd passed us (socket activation), or one bound by hand for tests."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        return socket.socket(fileno=SD_LISTEN_FDS_START)
    if path is None:
        raise SystemExit("nanoclaw-sandboxd: no socket from systemd and no --socket given")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with suppress(FileNotFoundError):
        os.unlink(path)
    sock.bind(path)
    os.chmod(path, 0o660)
    sock.listen()
    return sock


async def serve(args: argparse.Namespace) -> None:
    policy = load_policy(Path(args.policy))
    client_gid = grp.getgrnam(args.client_group).gr_gid
    systemd = await Systemd.connect()
    ip_filtering = await _holds(ip_filtering_enforced(systemd))
    socket_proxyd = find_socket_proxyd(args.socket_proxyd)
    refused = refusals(policy, ip_filtering, socket_proxyd, args.socket_proxyd)
    for name, why in refused.items():
        log.warning("group %s will be refused: %s", name, why)
    relays = Relays(systemd, socket_proxyd, EGRESS, args.egress_socket)
    model_relays = Relays(systemd, socket_proxyd, MODEL, args.credential_socket)
    for kind in (relays, model_relays):
        await kind.clear()
    # Sessions of an earlier run: their host connections, and so their pipes, are gone.
    for name in await systemd.loaded_units(AGENT_UNITS):
        log.info("stopping %s, left by an earlier run", name)
        await systemd.stop_unit(name)
    private_pids = await systemd.version() >= PRIVATE_PIDS_SINCE
    if not private_pids:
        log.warning(
            "PID isolation is not available (systemd before %d has no PrivatePIDs=): a "
            "tool unit can tell which PIDs exist on this machine, though it sees none of "
            "their processes (ProtectProc=invisible)",
            PRIVATE_PIDS_SINCE,
        )
    agent_cli = find_agent_cli(args.agent_cli)
    if agent_cli is None and any(group.agent for group in policy.groups.values()):
        log.warning(
            "no agent runtime at %s: every agent unit will be refused",
            args.agent_cli or "the Agent SDK's _bundled/claude",
        )
    broker = Broker(
        policy,
        systemd,
        client_gid,
        Enforcement(ip_filtering, private_pids, refused),
        relays,
        AgentRuns(systemd, policy, model_relays, agent_cli, private_pids),
        args.host_unit,
    )
    server = await asyncio.start_unix_server(
        broker.handle, sock=listening_socket(args.socket), limit=MAX_REQUEST_BYTES
    )
    log.info("serving %d groups", len(policy.groups))
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanoclaw-sandboxd", description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="/etc/nanoclaw/policy.json")
    parser.add_argument("--client-group", default="nanoclaw")
    parser.add_argument(
        "--host-unit",
        default="nanoclaw.service",
        help="the unit whose main process (besides root) may start tool units",
    )
    parser.add_argument("--socket", help="bind this path instead of using socket activation")
    parser.add_argument(
        "--egress-socket",
        default=DEFAULT_EGRESS_SOCKET,
        help="the host's egress proxy, where relays of groups with domains lead",
    )
    parser.add_argument(
        "--credential-socket",
        default=DEFAULT_CREDENTIAL_SOCKET,
        help="the host's credential proxy, where the model relays of agent units lead",
    )
    parser.add_argument(
        "--agent-cli",
        help="the agent runtime (default: the Claude Code CLI the Agent SDK bundles)",
    )
    parser.add_argument(
        "--socket-proxyd",
        help="systemd-socket-proxyd (found in systemd's usual places if not given)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except ConfigError as err:
        print(f"nanoclaw-sandboxd: invalid policy: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
