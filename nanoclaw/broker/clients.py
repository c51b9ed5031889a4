"""Who may talk to the broker, and who may have it start a unit.

Members of the client group (`nanoclaw`) and root may connect: they may ask for the
policy's summary and the workspaces' sizes, which hold nothing secret. Only root and the
main process of the host's unit (`--host-unit`, as systemd records its MainPID) may have
a unit started. The host's user runs more than the host: the agent CLI the host starts
and anything that starts (the first red-team pass got a hook to run there and ask for the
main group's sandbox). All of them are in the group, so membership cannot tell them
apart, but only one of them is the unit's MainPID.

Credentials are the kernel's, recorded when the client connected (SO_PEERCRED,
SO_PEERGROUPS), never read from /proc, where a pid may by now be another process's.
Where the kernel can also give a pidfd for the peer (SO_PEERPIDFD, Linux 6.5), the broker
checks that this very process is still alive, so a pid reused after the host's restart
cannot pass. (The host is also not dumpable, so what it starts cannot steer it:
nanoclaw.host.untraceable.)
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
from dataclasses import dataclass

from nanoclaw.broker.systemd_bus import Systemd

SO_PEERGROUPS = 59  # asm-generic/socket.h; Python's socket module names neither
SO_PEERPIDFD = 77  # Linux 6.5 and later
PEER_GROUPS_BYTES = 1024  # the most socket.getsockopt allows: 256 groups


class NotAllowed(Exception):
    """The client may not ask this; the message says why."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


class Clients:
    def __init__(self, client_gid: int, systemd: Systemd, host_unit: str) -> None:
        self.client_gid = client_gid
        self.systemd = systemd
        self.host_unit = host_unit

    def admit(self, sock: socket.socket) -> Peer:
        """Root and members of the client group may talk to the broker at all."""
        peer = _peer_of(sock)
        if peer.uid == 0 or peer.gid == self.client_gid or self.client_gid in _groups_of(sock):
            return peer
        raise NotAllowed(f"uid {peer.uid} is not in the broker's client group")

    async def may_start_units(self, sock: socket.socket, peer: Peer) -> None:
        """Only root and the host's main process may start tool units."""
        if peer.uid == 0:
            return
        pidfd = _pidfd_of(sock)
        try:
            main = await self.systemd.main_pid(self.host_unit)
            same = peer.pid == main and (pidfd is None or (pidfd >= 0 and _alive(pidfd)))
        finally:
            if pidfd is not None and pidfd >= 0:
                os.close(pidfd)
        if not same:
            raise NotAllowed(
                f"pid {peer.pid} may not start tool units: only root and the main process "
                f"of {self.host_unit} may"
            )


def _peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


def _groups_of(sock: socket.socket) -> set[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEER_GROUPS_BYTES)
    except OSError:  # ERANGE: more groups than Python lets us ask for; the gid must do
        return set()
    return set(struct.unpack(f"{len(raw) // 4}I", raw))


def _pidfd_of(sock: socket.socket) -> int | None:
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
