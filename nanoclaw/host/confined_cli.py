"""The agent runtime in its own unit: the SDK's transport to a CLI the broker started.

Instead of starting the CLI as a child of the host, this transport makes two pipes, asks
the broker for the group's agent unit (nanoclaw.broker.agent_runs) and hands it the CLI's
ends of them, which systemd makes the unit's stdin and stdout. The SDK then speaks to the
CLI as it always does: newline-delimited JSON, with the in-process MCP tools, hooks,
resume, follow-ups and interrupts on top (the SDK's Query). Closing ends the CLI's input,
gives it a few seconds to write its transcript and stop, then closes the connection to the
broker, which stops the unit if it still runs.

The CLI's arguments are the SDK's own (its subprocess transport builds them from the
options), so a confined CLI is started exactly as a local one would be; the broker checks
them against its allow-list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from dataclasses import replace
from typing import Any

import anyio
from claude_agent_sdk import ClaudeAgentOptions, CLIConnectionError, ProcessError
from claude_agent_sdk import __version__ as sdk_version
from claude_agent_sdk._internal.transport import Transport
from claude_agent_sdk._internal.transport.subprocess_cli import (
    _SDK_READS_SESSION_STATE_ENV,
    SubprocessCLITransport,
)

from nanoclaw.broker.protocol import SEND_STDIO, AgentRequest, encode
from nanoclaw.host.sandbox.client import SandboxError, read_answer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # one JSON line from the CLI: a long tool result
CLOSE_SECONDS = 5.0  # for the CLI to write its transcript after its input ends
# What the SDK's subprocess transport adds to every CLI's environment.
SDK_ENVIRONMENT = {
    "CLAUDE_CODE_ENTRYPOINT": "sdk-py",
    "CLAUDE_AGENT_SDK_VERSION": sdk_version,
    _SDK_READS_SESSION_STATE_ENV: "1",
}


def cli_arguments(options: ClaudeAgentOptions) -> tuple[str, ...]:
    """The arguments the SDK would start a local CLI with, without the program."""
    command = SubprocessCLITransport("", replace(options, cli_path="claude"))._build_command()
    return tuple(command[1:])


class ConfinedCLI(Transport):
    """One CLI process in the group's agent unit, for one SDK client."""

    def __init__(
        self,
        broker_socket: str,
        group: str,
        options: ClaudeAgentOptions,
        env: Mapping[str, str],
    ) -> None:
        self._broker_socket = broker_socket
        self._request = AgentRequest(group, cli_arguments(options), {**env, **SDK_ENVIRONMENT})
        self._ready = False
        self._write_lock = asyncio.Lock()
        self._stdin: asyncio.StreamWriter | None = None
        self._stdout: asyncio.StreamReader | None = None
        self._stdout_transport: asyncio.BaseTransport | None = None
        self._broker: asyncio.StreamWriter | None = None
        self._ended: asyncio.Future[dict[str, Any]] | None = None
        self.unit: str | None = None

    async def connect(self) -> None:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        try:
            reader = await self._start_unit(stdin_r, stdout_w)
        except BaseException:
            for fd in (stdin_w, stdout_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, stdout_w):
                os.close(fd)
        loop = asyncio.get_running_loop()
        self._stdout = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
        self._stdout_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._stdout),  # type: ignore[arg-type]
            os.fdopen(stdout_r, "rb", buffering=0),
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(stdin_w, "wb", buffering=0)
        )
        self._stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        self._ended = asyncio.ensure_future(_answer(reader))
        self._ready = True

    async def _start_unit(self, stdin_r: int, stdout_w: int) -> asyncio.StreamReader:
        """Ask the broker for the unit, hand it the CLI's pipe ends, wait until it runs."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self._broker_socket)
        except OSError as error:
            sock.close()
            raise CLIConnectionError(
                f"cannot reach the sandbox broker at {self._broker_socket}: {error}"
            ) from None
        reader, self._broker = await asyncio.open_unix_connection(sock=sock)
        self._broker.write(encode(self._request.to_wire()))
        await self._broker.drain()
        if await _answer(reader) != SEND_STDIO:
            raise CLIConnectionError("the sandbox broker did not ask for the CLI's pipes")
        # The only write outside the stream, with nothing of the stream's pending (drained).
        socket.send_fds(sock, [b"\0"], [stdin_r, stdout_w])
        self.unit = str((await _answer(reader))["unit"])
        return reader

    async def write(self, data: str) -> None:
        async with self._write_lock:
            if not self._ready or self._stdin is None:
                raise CLIConnectionError("the agent unit's CLI is not ready for writing")
            try:
                self._stdin.write(data.encode())
                await self._stdin.drain()
            except (ConnectionError, RuntimeError) as error:
                self._ready = False
                raise CLIConnectionError(f"cannot write to the agent unit's CLI: {error}") from None

    async def end_input(self) -> None:
        async with self._write_lock:
            if self._stdin is not None:
                self._stdin.close()
                self._stdin = None

    def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[dict[str, Any]]:
        if self._stdout is None:
            raise CLIConnectionError("not connected")
        while raw := await self._stdout.readline():
            line = raw.strip()
            if not line.startswith(b"{"):  # as the SDK does: the CLI writes some plain lines
                if line:
                    log.debug("skipped a line of the CLI's that is no message: %.200r", line)
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise CLIConnectionError(f"the CLI wrote a broken message: {error}") from None
        # The CLI closed its output: it is ending. The broker says how.
        ended = await self._how_it_ended()
        if ended.get("exit_status") != 0:
            self._ready = False
            raise ProcessError(
                f"{self.unit} ended: {ended}",
                exit_code=ended.get("exit_status"),
                stderr=f"journalctl -u {self.unit}",
            )

    async def _how_it_ended(self) -> dict[str, Any]:
        if self._ended is None:
            return {}
        with anyio.move_on_after(CLOSE_SECONDS):
            return dict((await self._ended).get("ended") or {})
        return {"result": "still running", "exit_status": None}

    async def close(self) -> None:
        """End the CLI's input, let it finish and exit by itself for a while (its output
        ends when it does), then have the broker stop the unit; every wait is bounded (the
        SDK calls this under a shielded scope)."""
        self._ready = False
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_SECONDS):  # a write stuck on a full pipe holds it
                await self.end_input()
            with anyio.move_on_after(CLOSE_SECONDS), suppress(Exception):
                while self._stdout is not None and await self._stdout.read(65536):
                    pass  # what it still says after its input ended is for nobody
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            if self._ended is not None:
                self._ended.cancel()
            if self._stdout_transport is not None:
                self._stdout_transport.close()
                self._stdout_transport = None

    def is_ready(self) -> bool:
        return self._ready


async def _answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The broker's next answer; CLIConnectionError (for the SDK) with why there is none."""
    try:
        return await read_answer(reader)
    except SandboxError as error:
        raise CLIConnectionError(f"no agent unit: {error}") from None
