"""Does IPAddressDeny= really hold here? systemd silently ignores it without cgroup BPF.

The broker asks once at start: a probe unit with IPAddressDeny=any tries to reach a
loopback listener of ours, next to a control unit without the deny that must reach it.
Only a refused probe with a successful control counts as enforced. Groups with
`egress.cidrs` need it; groups with domains do not (they have a network of their own).
A probe that gives no answer (a slow or busy machine) is asked again, a few times, since
"no" here refuses every such group until the broker's next start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nanoclaw.broker.systemd_bus import BusError, Property, Systemd

# Exit 0 when connected and REFUSED when the connection fails; anything else (the probe
# could not even run) is no answer, so that a broken probe never reads as "enforced".
REFUSED = 77
_CONNECT = (
    "import socket, sys\n"
    "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
    f"except OSError: sys.exit({REFUSED})"
)
log = logging.getLogger(__name__)
_DYNAMIC_USER: Property = ("DynamicUser", "b", True)
CLD_EXITED = 1


class ProbeFailed(Exception):
    """A probe unit neither connected nor was refused: the question has no answer."""


_DENY_ALL: Property = ("IPAddressDeny", "a(iayu)", ((2, bytes(4), 0), (10, bytes(16), 0)))


async def _reaches(
    systemd: Systemd, address: tuple[str, int], user: Property, extra: tuple[Property, ...]
) -> bool:
    """Whether a unit running as `user`, with `extra`, connects to `address`."""
    name = f"nanoclaw-ip-probe-{secrets.token_hex(4)}.service"
    argv = (sys.executable, "-c", _CONNECT, address[0], str(address[1]))
    properties: tuple[Property, ...] = (
        ("Description", "s", "nanoclaw: is IP filtering enforced?"),
        ("ExecStart", "a(sasb)", ((sys.executable, argv, False),)),
        ("Type", "s", "exec"),
        ("CollectMode", "s", "inactive-or-failed"),
        ("RuntimeMaxUSec", "t", 10_000_000),
        user,
        *extra,
    )
    path = await systemd.start_transient(name, properties, [])
    try:
        outcome = await systemd.wait_inactive(path)
    finally:
        await systemd.release(path)
    if outcome.result == "success":
        return True
    if outcome.exit_code == CLD_EXITED and outcome.exit_status == REFUSED:
        return False
    raise ProbeFailed(f"probe unit {name} neither connected nor was refused: {outcome}")


@asynccontextmanager
async def _listener(address: str) -> AsyncIterator[tuple[str, int]]:
    """A TCP listener on `address` (a free port) that accepts and closes."""
    sock = socket.create_server((address, 0))
    sock.setblocking(False)
    server = await asyncio.start_server(lambda r, w: w.close(), sock=sock)
    async with server:
        yield address, sock.getsockname()[1]


async def _ask_once(systemd: Systemd) -> bool:
    async with _listener("127.0.0.1") as address:
        control = await _reaches(systemd, address, _DYNAMIC_USER, ())
        probe = await _reaches(systemd, address, _DYNAMIC_USER, (_DENY_ALL,))
    return control and not probe


async def ip_filtering_enforced(systemd: Systemd, attempts: int = 3) -> bool:
    """Raises ProbeFailed (or BusError) when the last of `attempts` gets no answer either."""
    for attempt in range(1, attempts):
        try:
            return await _ask_once(systemd)
        except (ProbeFailed, BusError) as error:
            log.warning("IP filtering probe, attempt %d of %d: %s", attempt, attempts, error)
            await asyncio.sleep(attempt)
    return await _ask_once(systemd)
