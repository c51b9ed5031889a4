"""Running one planned unit: start it with our pipes as its stdio, feed its stdin, keep a
capped part of its output, stop it when its time is up or its client goes away, and read
how it ended."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from nanoclaw.broker.compiler import UnitPlan
from nanoclaw.broker.systemd_bus import BusError, Property, Systemd, UnitOutcome, sent_properties
from nanoclaw.broker.unit_digest import properties_sha256

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 5
# The unit's stdio: indexes into the file descriptors passed with StartTransientUnit.
PIPES: tuple[Property, ...] = (
    ("StandardInputFileDescriptor", "h", 0),
    ("StandardOutputFileDescriptor", "h", 1),
    ("StandardErrorFileDescriptor", "h", 2),
)


@dataclass(frozen=True)
class Ran:
    outcome: UnitOutcome
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration_ms: int
    properties_sha256: str  # of exactly what StartTransientUnit was given


async def run_unit(
    systemd: Systemd,
    plan: UnitPlan,
    stdin: bytes,
    output_cap: int,
    timeout: int,
    client_gone: Awaitable[Any],
) -> Ran:
    """Start `plan` and wait for it to end; `client_gone` completes if the client leaves."""
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    properties = plan.properties + PIPES
    digest = properties_sha256(sent_properties(properties))
    started = time.monotonic()
    try:
        path = await systemd.start_transient(plan.name, properties, [stdin_r, out_w, err_w])
    finally:
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
    log.info("started %s (properties sha256 %s)", plan.name, digest)
    feeder = asyncio.create_task(asyncio.to_thread(_feed, stdin_w, stdin))
    outputs = asyncio.gather(_read_capped(out_r, output_cap), _read_capped(err_r, output_cap))
    gone = asyncio.ensure_future(client_gone)
    try:
        waiters: set[asyncio.Future[Any]] = {outputs, gone}
        done, _ = await asyncio.wait(
            waiters, timeout=timeout + KILL_GRACE_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if outputs not in done:
            reason = "the client went away" if gone in done else "the time ran out"
            log.warning("stopping %s: %s", plan.name, reason)
            await systemd.stop(plan.name)
        (stdout, out_cut), (stderr, err_cut) = await outputs
        outcome = await systemd.wait_inactive(path)
    finally:
        gone.cancel()
        feeder.cancel()
        with suppress(BusError):
            await systemd.release(path)
    duration_ms = int((time.monotonic() - started) * 1000)
    return Ran(outcome, stdout, stderr, out_cut or err_cut, duration_ms, digest)


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


def _feed(fd: int, data: bytes) -> None:
    try:
        with suppress(BrokenPipeError):
            os.write(fd, data)
    finally:
        os.close(fd)
