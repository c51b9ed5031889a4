"""Running a group's agent unit for as long as the host's session lasts.

The host's SDK talks to the CLI over two pipes; the host hands the CLI's ends of them to
the broker (SCM_RIGHTS), which passes them on to systemd as the unit's stdin and stdout,
so the conversation never goes through the broker. The broker holds the connection until
the unit stops, then says how it ended; the host closing it (its session closed, or the
host gone) stops the unit. nanoclaw.broker.agent_unit says what the unit is.
"""

from __future__ import annotations

import asyncio
import grp
import importlib.util
import logging
import os
import pwd
import secrets
import socket
import stat
from contextlib import suppress
from typing import Any

from nanoclaw.broker.agent_unit import agent_of, compile_agent_unit
from nanoclaw.broker.policy import Policy
from nanoclaw.broker.protocol import SEND_STDIO, STDIO_FDS, AgentRequest, ProtocolError, encode
from nanoclaw.broker.relay import Relays, RelayUnavailable
from nanoclaw.broker.systemd_bus import BusError, Property, Systemd
from nanoclaw.broker.tool_request import RequestError

log = logging.getLogger(__name__)

RECEIVE_SECONDS = 10.0
# A warm session lives for minutes to hours: ask systemd about it every few seconds only.
POLL_SECONDS = 1.0
STDIO: tuple[Property, ...] = (
    ("StandardInputFileDescriptor", "h", 0),
    ("StandardOutputFileDescriptor", "h", 1),
)


def find_agent_cli(given: str | None = None) -> str | None:
    """The agent runtime: `given`, else the CLI the Agent SDK bundles, found without
    importing the SDK; None when there is no program there."""
    path = given
    if path is None:
        spec = importlib.util.find_spec("claude_agent_sdk")
        places = list(spec.submodule_search_locations or []) if spec else []
        path = os.path.join(places[0], "_bundled", "claude") if places else None
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


class AgentRuns:
    def __init__(
        self,
        systemd: Systemd,
        policy: Policy,
        relays: Relays,
        cli: str | None,
        private_pids: bool,
    ) -> None:
        self.systemd = systemd
        self.policy = policy
        self.relays = relays
        self.cli = cli
        self.private_pids = private_pids

    async def run(
        self, request: AgentRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        """Start the unit with the client's pipes, wait until it stops; the last answer."""
        if self.cli is None:
            raise RequestError(
                "this broker has no agent runtime: the Agent SDK's bundled CLI was not "
                "found (name it with --agent-cli)"
            )
        plan = compile_agent_unit(
            self.policy, request, self.cli, secrets.token_hex(8), self.private_pids
        )
        uid = agent_of(self.policy.group(request.group)).uid
        try:
            pwd.getpwuid(uid)
            grp.getgrgid(uid)
        except KeyError:
            raise RequestError(
                f"group {request.group}: agent uid/gid {uid} has no user or group entry, which "
                f"systemd needs; create both (sysusers: u nanoclaw-agent-{request.group} {uid})"
            ) from None
        try:
            await self.relays.ensure(request.group)
        except RelayUnavailable as error:
            raise RequestError(str(error)) from None
        fds = await receive_stdio(writer)
        try:
            path = await self.systemd.start_transient(plan.name, plan.properties + STDIO, fds)
        finally:
            for fd in fds:
                os.close(fd)
        log.info("started %s", plan.name)
        writer.write(encode({"ok": True, "unit": plan.name}))
        await writer.drain()
        ended = asyncio.ensure_future(self.systemd.wait_inactive(path, longest=POLL_SECONDS))
        gone = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({ended, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                log.info("stopping %s: its session was closed", plan.name)
                await self.systemd.stop_unit(plan.name)
            outcome = await ended
        finally:
            gone.cancel()
            ended.cancel()
            with suppress(BusError):
                await self.systemd.release(path)
        killed = outcome.exit_code in (2, 3)  # CLD_KILLED, CLD_DUMPED
        log.info("%s ended: %s", plan.name, outcome.result)
        return {
            "ok": True,
            "ended": {
                "result": outcome.result,
                "exit_status": None if killed else outcome.exit_status,
                "signal": outcome.exit_status if killed else None,
            },
        }


async def receive_stdio(writer: asyncio.StreamWriter) -> list[int]:
    """Ask for the CLI's pipe ends and take them off the connection. Reading is paused
    meanwhile, so the stream cannot swallow the message that carries them."""
    transport: Any = writer.transport
    transport.pause_reading()
    try:
        writer.write(encode(SEND_STDIO))
        await writer.drain()
        fd = writer.get_extra_info("socket").fileno()
        return await asyncio.to_thread(_receive_fds, fd)
    finally:
        transport.resume_reading()


def _receive_fds(fd: int) -> list[int]:
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.settimeout(RECEIVE_SECONDS)
        try:
            data, fds, flags, _ = socket.recv_fds(sock, 1, STDIO_FDS)
        except TimeoutError:
            raise ProtocolError(f"no pipes came in {RECEIVE_SECONDS:.0f} s") from None
    # Only pipes: a unit's stdio must not be some file the client happens to hold open.
    if (
        data != b"\0"
        or flags & socket.MSG_CTRUNC
        or len(fds) != STDIO_FDS
        or not all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in fds)
    ):
        for received in fds:
            os.close(received)
        raise ProtocolError(f"expected one byte with {STDIO_FDS} pipe ends")
    return fds
