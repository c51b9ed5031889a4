"""The relays: the one way out of a unit's private network namespace, to one host socket.

Two kinds (nanoclaw.broker.compiler's Route): a group with domains has an egress relay,
whose tool units reach the egress proxy (nanoclaw.host.egress_proxy) through it, and a group
with an agent unit has a model relay, whose CLI reaches the credential proxy
(nanoclaw.host.credential_proxy) through it. Each unit runs with PrivateNetwork= and
JoinsNamespaceOf= the relay's socket unit, so they share its namespace: a loopback on which
the socket listens at 127.0.0.1:PORT, and nothing else. systemd-socket-proxyd, started by
that socket, carries each connection to the host's Unix socket, where the proxy asks for a
secret of the group's. There is no route, no DNS and no other address to try: the kernel's
network namespaces hold it, with no need for cgroup BPF.

The relay itself runs as a dynamic user with no capabilities and may open Unix sockets only.

Why this way, of the ways to put a listener into a unit's private namespace: PID 1 makes
the listening socket inside the namespace and hands the namespace to each unit that joins
it, so the broker prepares no namespace (NetworkNamespacePath= would need one made and kept
by root code of ours) and runs no forwarder of its own, and the forwarder is systemd's, out
of the unit's reach (one started inside the unit could be replaced by the tool). What the
broker adds is two units per group and kind, whose every property is below. It costs a
D-Bus query per call and, once per group, the relay's start (bench/tool_latency.py
measures both).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict

from nanoclaw.broker.compiler import RELAY_ADDRESS, Route
from nanoclaw.broker.systemd_bus import BusError, Property, Systemd

log = logging.getLogger(__name__)

SOCKET_PROXYD_PLACES = (
    "/usr/lib/systemd/systemd-socket-proxyd",
    "/lib/systemd/systemd-socket-proxyd",
)
# A socket unit starts in milliseconds; a busy machine may queue its start for seconds.
START_SECONDS = 30.0


class RelayUnavailable(Exception):
    """The relay cannot run; the message says why."""


def find_socket_proxyd(given: str | None = None) -> str | None:
    """systemd-socket-proxyd: at `given`, else where systemd usually keeps it; None when
    there is no program there."""
    places = (given,) if given else SOCKET_PROXYD_PLACES
    return next(
        (path for path in places if os.path.isfile(path) and os.access(path, os.X_OK)), None
    )


def relay_properties(
    route: Route, group: str, socket_proxyd: str, target: str
) -> tuple[tuple[Property, ...], tuple[Property, ...]]:
    """The socket unit's properties and its service's."""
    description = ("Description", "s", f"nanoclaw relay {route.prefix}{group} to {target}")
    socket_unit: tuple[Property, ...] = (
        description,
        ("Listen", "a(ss)", (("Stream", f"{RELAY_ADDRESS}:{route.port}"),)),
        ("PrivateNetwork", "b", True),  # the namespace the group's units then join
        ("CollectMode", "s", "inactive-or-failed"),
    )
    service: tuple[Property, ...] = (
        description,
        ("ExecStart", "a(sasb)", ((socket_proxyd, (socket_proxyd, target), False),)),
        ("DynamicUser", "b", True),
        ("PrivateNetwork", "b", True),
        ("JoinsNamespaceOf", "as", (route.socket_name(group),)),
        # Accepting on the socket it was handed needs no family; the proxy is a Unix socket.
        ("RestrictAddressFamilies", "(bas)", (True, ("AF_UNIX",))),
        ("CapabilityBoundingSet", "t", 0),
        ("NoNewPrivileges", "b", True),
        ("PrivateDevices", "b", True),
        ("ProtectKernelTunables", "b", True),
        ("ProtectControlGroups", "b", True),
        ("RestrictNamespaces", "t", 0),  # no namespace types may be created
        ("MemoryDenyWriteExecute", "b", True),
        ("SystemCallFilter", "(bas)", (True, ("@system-service",))),
        ("CollectMode", "s", "inactive-or-failed"),
    )
    return socket_unit, service


class Relays:
    """Starts each group's relay of one kind before its first unit, and clears those of an
    earlier run."""

    def __init__(
        self, systemd: Systemd, socket_proxyd: str | None, route: Route, target: str
    ) -> None:
        self.systemd = systemd
        self.socket_proxyd = socket_proxyd
        self.route = route
        self.target = target  # the host's Unix socket the relay leads to
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def clear(self) -> None:
        """Stop relays an earlier broker left: they may serve groups or paths no longer meant."""
        for name in await self.systemd.loaded_units(self.route.prefix + "*"):
            log.info("stopping %s, left by an earlier run", name)
            await self.systemd.stop_unit(name)

    async def ensure(self, group: str) -> None:
        """Have `group`'s relay listening, or say why it cannot."""
        name = self.route.socket_name(group)
        if self.socket_proxyd is None:  # the broker refuses such groups before this
            raise RelayUnavailable(f"group {group}: no systemd-socket-proxyd for {name}")
        async with self._locks[group]:
            if await self.systemd.active_state(name) == "active":
                return
            socket_unit, service = relay_properties(
                self.route, group, self.socket_proxyd, self.target
            )
            service_name = name.removesuffix(".socket") + ".service"
            try:
                await self.systemd.start_transient(
                    name, socket_unit, aux=[(service_name, service)], keep_loaded=False
                )
            except BusError as error:
                raise RelayUnavailable(f"cannot start {name}: {error}") from None
            await self._wait_listening(name)
            log.info("started %s", name)

    async def _wait_listening(self, name: str) -> None:
        deadline = asyncio.get_running_loop().time() + START_SECONDS
        delay = 0.005
        while True:
            # The job first: read after the state, a start finished in between would look
            # like an inactive unit with nothing queued, that is, one that failed.
            queued = await self.systemd.has_job(name)
            state = await self.systemd.active_state(name)
            if state == "active":
                return
            if state == "failed" or (state == "inactive" and not queued):
                raise RelayUnavailable(f"{name} failed to start ({state}); see its journal")
            if asyncio.get_running_loop().time() > deadline:
                raise RelayUnavailable(
                    f"{name} did not start listening in {START_SECONDS:.0f} s ({state})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
