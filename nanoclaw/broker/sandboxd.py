"""nanoclaw-sandboxd: the root broker that runs one command in a fresh transient unit.

Why it exists: starting transient units needs polkit's manage-units, which no rule can
limit to safe ExecStart= or User= values; granting it to the host would make the host
root. So the host stays unprivileged and asks this broker, over a Unix socket that only
group `nanoclaw` can open, to run argv for a group. Every unit property comes from the
root-owned policy file through `compile_unit`; the request names only the group, argv,
working directory, stdin and a timeout within the policy's bound.

Who may start a unit: root, and the main process of the host's unit (`--host-unit`, as
systemd records it), nobody else. The host's user runs more than the host: the agent CLI
the host starts and anything that starts (the first red-team pass got a hook to run there
and ask for the main group's sandbox). All of them are in group `nanoclaw`, so membership
cannot tell them apart, but only one of them is the unit's MainPID. The peer's pid is the
one the kernel recorded at connect time (SO_PEERCRED); where the kernel can also give a
pidfd for it (SO_PEERPIDFD, Linux 6.5), the broker checks that this very process is
still alive, so a pid reused after the host's restart cannot pass. Members of the group
may still ask for the policy's description and the workspaces' sizes, nothing secret.

Protocol, one request per connection. The client sends one line of JSON:
  {"group": "family", "argv": ["/bin/sh", "-c", "ls"], "cwd": "/workspace/group",
   "timeout": 30, "stdin": "<base64, optional>", "proxy_token": "<optional>"}
and reads one line of JSON back:
  {"ok": true, "unit": "...", "result": "success", "exit_status": 0, "signal": null,
   "stdout": "<base64>", "stderr": "<base64>", "truncated": false, "duration_ms": 52}
or {"ok": false, "error": "why"}. Closing the connection early stops the unit.
`proxy_token` is the host's per-call secret for its egress proxy; it only ever becomes
the password in the unit's proxy URL, for groups with egress domains.

The host may instead send {"describe": true} and read back what it needs to serve the
policy: {"ok": true, "proxy": {"address": "127.0.0.1", "port": 3128} or null,
"groups": {"family": {"wall_seconds": 600, "domains": ["github.com"]}}}; or send
{"usage": true} and read back how much each workspace holds (nanoclaw.broker.workspace_usage):
{"ok": true, "free_bytes": 123, "groups": {"family": {"bytes": 4096, "complete": true}}}.

It imports nothing from the agent side: only the policy, its compiler and D-Bus.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import errno
import grp
import json
import logging
import os
import pwd
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoclaw.broker import workspace_usage
from nanoclaw.broker.compiler import (
    PRIVATE_PIDS_SINCE,
    RequestError,
    ToolRequest,
    compile_unit,
)
from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.ip_probe import ProbeFailed, ip_filtering_enforced, proxy_port_only
from nanoclaw.broker.mount_covers import TooManyCovers, scan_mount
from nanoclaw.broker.policy import GroupPolicy, Policy, UnknownGroup
from nanoclaw.broker.policy_file import load_policy
from nanoclaw.broker.systemd_bus import BusError, Property, Systemd

log = logging.getLogger("nanoclaw.broker.sandboxd")

MAX_REQUEST_BYTES = 12 * 1024 * 1024  # argv (1 MiB) + base64 stdin (8 MiB) + framing
MAX_STDIN_BYTES = 8 * 1024 * 1024
SD_LISTEN_FDS_START = 3
SO_PEERGROUPS = 59  # asm-generic/socket.h; Python's socket module names neither
SO_PEERPIDFD = 77  # Linux 6.5 and later
PEER_GROUPS_BYTES = 1024  # the most socket.getsockopt allows: 256 groups
KILL_GRACE_SECONDS = 5
# The unit's stdio: indexes into the file descriptors passed with StartTransientUnit.
PIPES: tuple[Property, ...] = (
    ("StandardInputFileDescriptor", "h", 0),
    ("StandardOutputFileDescriptor", "h", 1),
    ("StandardErrorFileDescriptor", "h", 2),
)


class Refused(Exception):
    """The request is not allowed; the message goes back to the client."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


def peer_groups(sock: socket.socket) -> set[int]:
    """The client's supplementary groups as the kernel recorded them at connect time
    (SO_PEERGROUPS), not read from /proc, where the pid may by now be someone else's."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEER_GROUPS_BYTES)
    except OSError:  # ERANGE: more groups than Python lets us ask for; the gid must do
        return set()
    return set(struct.unpack(f"{len(raw) // 4}I", raw))


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd of the very process that connected, or None where the kernel has none."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as error:
        if error.errno == errno.ENOPROTOOPT:  # before Linux 6.5
            return None
        return -1  # ESRCH: it has exited already, and no check can pass for it


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # without CAP_KILL, EPERM: it exists, and is not ours to signal
        return True
    return True


def parse_json(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused("request must be a JSON object")
    return data


def parse_request(data: dict[str, Any]) -> tuple[ToolRequest, bytes]:
    """Only these six fields exist; anything else is refused, not ignored."""
    extra = set(data) - {"group", "argv", "cwd", "timeout", "stdin", "proxy_token"}
    if extra:
        raise Refused(f"unknown request fields: {', '.join(sorted(extra))}")
    group, argv, cwd, timeout = (data.get(k) for k in ("group", "argv", "cwd", "timeout"))
    if not isinstance(group, str) or not isinstance(cwd, str):
        raise Refused("group and cwd must be strings")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise Refused("argv must be a list of strings")
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise Refused("timeout must be an integer number of seconds")
    try:
        stdin = base64.b64decode(data.get("stdin", ""), validate=True)
    except (binascii.Error, TypeError):
        raise Refused("stdin must be base64") from None
    if len(stdin) > MAX_STDIN_BYTES:
        raise Refused(f"stdin is limited to {MAX_STDIN_BYTES} bytes")
    request = ToolRequest(
        group=group,
        argv=tuple(argv),
        cwd=cwd,
        timeout_seconds=timeout,
        proxy_token=data.get("proxy_token"),  # checked by compile_unit
    )
    return request, stdin


def describe_policy(policy: Policy) -> dict[str, Any]:
    """What the host needs to clamp timeouts and run the egress proxy, and nothing more."""
    proxy = None
    if policy.proxy is not None:
        proxy = {"address": policy.proxy[0], "port": policy.proxy[1]}
    groups = {
        name: {"wall_seconds": g.limits.wall_seconds, "domains": list(g.egress.domains)}
        for name, g in policy.groups.items()
    }
    return {"ok": True, "proxy": proxy, "groups": groups}


async def _read_capped(fd: int, cap: int) -> tuple[bytes, bool]:
    """Read a pipe to EOF, keeping `cap` bytes; the rest is drained so the unit never blocks."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    kept = bytearray()
    truncated = False
    try:
        while chunk := await reader.read(65536):
            room = cap - len(kept)
            kept += chunk[:room]
            truncated = truncated or len(chunk) > room
    finally:
        transport.close()
    return bytes(kept), truncated


class Broker:
    def __init__(
        self,
        policy: Policy,
        systemd: Systemd,
        client_gid: int,
        ip_filtering: bool,
        proxy_port_filtered: bool,
        host_unit: str = "nanoclaw.service",
        private_pids: bool = False,
    ) -> None:
        self.policy = policy
        self.systemd = systemd
        self.client_gid = client_gid
        self.ip_filtering = ip_filtering
        self.proxy_port_filtered = proxy_port_filtered
        self.host_unit = host_unit
        self.private_pids = private_pids

    def admit(self, sock: socket.socket) -> Peer:
        """Root and members of the client group may talk to the broker at all."""
        peer = peer_of(sock)
        if peer.uid == 0 or peer.gid == self.client_gid or self.client_gid in peer_groups(sock):
            return peer
        raise Refused(f"uid {peer.uid} is not in the broker's client group")

    async def authorize_run(self, sock: socket.socket, peer: Peer) -> None:
        """Only root and the host's main process may start tool units (see the top)."""
        if peer.uid == 0:
            return
        pidfd = peer_pidfd(sock)
        try:
            main = await self.systemd.main_pid(self.host_unit)
            same = peer.pid == main and (pidfd is None or (pidfd >= 0 and _alive(pidfd)))
        finally:
            if pidfd is not None and pidfd >= 0:
                os.close(pidfd)
        if not same:
            raise Refused(
                f"pid {peer.pid} may not start tool units: only root and the main process "
                f"of {self.host_unit} may"
            )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            peer = self.admit(sock)
            try:
                line = await reader.readline()
            except ValueError:  # the stream's limit, MAX_REQUEST_BYTES, was passed
                raise Refused(f"request larger than {MAX_REQUEST_BYTES} bytes") from None
            if not line.endswith(b"\n"):
                raise Refused("request must be one line of JSON")
            data = parse_json(line)
            if data == {"describe": True}:
                reply = describe_policy(self.policy)
                # For `nanoclaw doctor`: what the start-up checks found here.
                reply["enforced"] = {
                    "ip_filtering": self.ip_filtering,
                    "proxy_port_filter": self.proxy_port_filtered,
                    "pid_isolation": self.private_pids,
                }
            elif data == {"usage": True}:
                try:
                    measured = await asyncio.to_thread(workspace_usage.report, self.policy)
                except OSError as error:
                    raise Refused(f"cannot measure the workspaces: {error}") from None
                reply = {"ok": True, **dataclasses.asdict(measured)}
            else:
                await self.authorize_run(sock, peer)
                request, stdin = parse_request(data)
                reply = await self.run(request, stdin, reader)
        except Refused as refusal:
            reply = {"ok": False, "error": str(refusal)}
            log.warning("refused: %s", refusal)
        except (RequestError, UnknownGroup, BusError, ConfigError) as exc:
            reply = {"ok": False, "error": str(exc)}
            log.warning("refused: %s", exc)
        except Exception:  # a bug of ours: the client hears of it instead of hanging
            log.exception("failed to handle a request")
            reply = {"ok": False, "error": "the broker failed; see its journal"}
        with suppress(ConnectionError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def run(
        self, request: ToolRequest, stdin: bytes, client: asyncio.StreamReader
    ) -> dict[str, Any]:
        group = self.policy.group(request.group)
        if group.egress.any and not self.ip_filtering:
            raise Refused(
                f"group {group.name} has egress, but IP filtering is not enforced on this "
                "machine (no cgroup BPF): refusing rather than running it unfiltered"
            )
        if group.egress.domains and not self.proxy_port_filtered:
            raise Refused(
                f"group {group.name} has egress domains, but the other ports of the proxy's "
                "address are open to it (is nanoclaw-port-filter.service loaded?): refusing"
            )
        try:
            pwd.getpwuid(group.uid)
            grp.getgrgid(group.uid)
        except KeyError:
            raise Refused(
                f"group {group.name}: uid/gid {group.uid} has no user or group entry, which "
                f"systemd needs; create both (sysusers: u nanoclaw-tool-{group.name} "
                f"{group.uid}:{group.uid})"
            ) from None
        # The owner may have changed a path since the policy was read; no tool can change
        # one between this check and the bind (nanoclaw.broker.mount_sources says why).
        try:
            self.policy.check_binds(group, self.policy.tool_users())
        except ConfigError as error:
            raise Refused(f"{error}; refusing the mount") from None
        plan = compile_unit(
            self.policy,
            request,
            secrets.token_hex(8),
            covers=_covers(group, self.policy.blocked_patterns),
            private_pids=self.private_pids,
        )
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started = time.monotonic()
        try:
            path = await self.systemd.start_transient(
                plan.name, plan.properties + PIPES, [stdin_r, out_w, err_w]
            )
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        log.info("started %s for %s", plan.name, group.name)
        feeder = asyncio.create_task(asyncio.to_thread(_feed, stdin_w, stdin))
        cap = group.limits.output_bytes
        outputs = asyncio.gather(_read_capped(out_r, cap), _read_capped(err_r, cap))
        gone = asyncio.create_task(client.read(1))  # EOF: the client went away
        try:
            waiters: set[asyncio.Future[Any]] = {outputs, gone}
            done, _ = await asyncio.wait(
                waiters,
                timeout=request.timeout_seconds + KILL_GRACE_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if outputs not in done:
                reason = "the client went away" if gone in done else "the time ran out"
                log.warning("stopping %s: %s", plan.name, reason)
                await self.systemd.stop(plan.name)
            (stdout, out_cut), (stderr, err_cut) = await outputs
            outcome = await self.systemd.wait_inactive(path)
        finally:
            gone.cancel()
            feeder.cancel()
            with suppress(BusError):
                await self.systemd.release(path)
        killed = outcome.exit_code in (2, 3)  # CLD_KILLED, CLD_DUMPED
        return {
            "ok": True,
            "unit": plan.name,
            "result": outcome.result,
            "exit_status": None if killed else outcome.exit_status,
            "signal": outcome.exit_status if killed else None,
            "stdout": base64.b64encode(stdout).decode(),
            "stderr": base64.b64encode(stderr).decode(),
            "truncated": out_cut or err_cut,
            "duration_ms": int((time.monotonic() - started) * 1000),
        }


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


async def _holds(check: Coroutine[Any, Any, bool]) -> bool:
    """The answer of a start-up check; a check that cannot answer counts as "no"."""
    try:
        return await check
    except (ProbeFailed, BusError) as error:
        log.warning("%s", error)
        return False


async def proxy_port_filtered(systemd: Systemd, policy: Policy) -> bool:
    """Whether the port filter holds for the groups with domains (trivially, without any)."""
    uids = [group.uid for group in policy.groups.values() if group.egress.domains]
    if policy.proxy is None or not uids:
        return True
    return await proxy_port_only(systemd, policy.proxy[0], uids[0])


def _feed(fd: int, data: bytes) -> None:
    try:
        with suppress(BrokenPipeError):
            os.write(fd, data)
    finally:
        os.close(fd)


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
    enforced = await _holds(ip_filtering_enforced(systemd))
    if not enforced:
        log.warning("IP filtering is not enforced here: groups with egress will be refused")
    port_filtered = enforced and await _holds(proxy_port_filtered(systemd, policy))
    if enforced and not port_filtered:
        log.warning("the proxy's other ports are open to tools: groups with domains refused")
    private_pids = await systemd.version() >= PRIVATE_PIDS_SINCE
    if not private_pids:
        log.warning(
            "PID isolation is not available (systemd before %d has no PrivatePIDs=): a "
            "tool unit can tell which PIDs exist on this machine, though it sees none of "
            "their processes (ProtectProc=invisible)",
            PRIVATE_PIDS_SINCE,
        )
    broker = Broker(
        policy, systemd, client_gid, enforced, port_filtered, args.host_unit, private_pids
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
