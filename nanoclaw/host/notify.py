"""sd_notify: tell systemd (Type=notify) when the host is ready, how it is, and that it lives.

The protocol is one datagram of KEY=value lines to $NOTIFY_SOCKET, a path or, with a
leading '@', an abstract socket. Outside systemd nothing is set and nothing is sent.
The watchdog is fed from the event loop itself, so a loop that hangs stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 5.0


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        # WATCHDOG_PID names the process the watchdog is meant for; a child ignores it.
        for_us = env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and for_us else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> None:
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or the socket hidden: the host keeps serving
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)

    async def heartbeat(self, status: Callable[[], str]) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, and STATUS= whenever it changed."""
        if not self._address:
            return
        interval = STATUS_INTERVAL_SECONDS
        if self.watchdog_seconds is not None:
            interval = min(interval, self.watchdog_seconds / 2)
        last = ""
        while True:
            fields = {"WATCHDOG": "1"} if self.watchdog_seconds is not None else {}
            text = status()
            if text != last:
                fields["STATUS"] = last = text
            if fields:
                self.send(**fields)
            await asyncio.sleep(interval)
