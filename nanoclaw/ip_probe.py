"""Does IPAddressDeny= really hold here? systemd silently ignores it without cgroup BPF.

The broker asks once at start: a probe unit with IPAddressDeny=any tries to reach a
loopback listener of ours, next to a control unit without the deny that must reach it.
Only a refused probe with a successful control counts as enforced.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys

from nanoclaw.systemd_bus import Property, Systemd

_CONNECT = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3)"
_DENY_ALL: Property = ("IPAddressDeny", "a(iayu)", ((2, bytes(4), 0), (10, bytes(16), 0)))


async def _reaches(systemd: Systemd, port: int, extra: tuple[Property, ...]) -> bool:
    name = f"nanoclaw-ip-probe-{secrets.token_hex(4)}.service"
    properties: tuple[Property, ...] = (
        ("Description", "s", "nanoclaw: is IP filtering enforced?"),
        (
            "ExecStart",
            "a(sasb)",
            ((sys.executable, (sys.executable, "-c", _CONNECT, str(port)), False),),
        ),
        ("DynamicUser", "b", True),
        ("Type", "s", "exec"),
        ("CollectMode", "s", "inactive-or-failed"),
        ("RuntimeMaxUSec", "t", 10_000_000),
        *extra,
    )
    path = await systemd.start_transient(name, properties, [])
    try:
        outcome = await systemd.wait_inactive(path)
    finally:
        await systemd.release(path)
    return outcome.result == "success"


async def ip_filtering_enforced(systemd: Systemd) -> bool:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    server = await asyncio.start_server(lambda r, w: w.close(), sock=listener)
    async with server:
        control = await _reaches(systemd, port, ())
        probe = await _reaches(systemd, port, (_DENY_ALL,))
    return control and not probe
