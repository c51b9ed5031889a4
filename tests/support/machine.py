"""A real systemd to test against: a systemd-nspawn container booted from a cached rootfs.

The machine itself is the product's (nanoclaw/appliance/machine.py, which says how it runs);
here it gets the NixOS test driver's `Machine` API (start, succeed, fail, wait_for_unit, ...),
so a test reads like a NixOS VM test, and the loud skip-or-fail rule for hosts that cannot
boot one.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping

import pytest

from nanoclaw.appliance.machine import REPO, NspawnMachine, machine_available, rootfs
from nanoclaw.appliance.machine_cgroups import clean_leftovers
from tests.support.driver_api import DriverApi

__all__ = [
    "BROKER_OVERRIDE",
    "INSTALL_BROKER",
    "REPO",
    "SOURCE",
    "Machine",
    "clean_leftovers",
    "machine_available",
    "median_seconds",
    "require_machine",
    "rootfs",
    "tool_users",
]


# Where machines see this checkout, and the drop-in that runs the broker unit of units/
# from it (instead of an installed nanoclaw-sandboxd).
SOURCE = "/opt/nanoclaw-src"
BROKER_OVERRIDE = f"""[Service]
ExecStart=
ExecStart=/usr/bin/python3 -m nanoclaw.broker.sandboxd --policy /etc/nanoclaw/policy.json
Environment=PYTHONPATH={SOURCE}
"""


# Shell, run as root in a machine: the broker's units of units/ (copied to /tmp/units with
# BROKER_OVERRIDE as override.conf), started by socket.
INSTALL_BROKER = """cp /tmp/units/nanoclaw-sandboxd.socket /tmp/units/nanoclaw-sandboxd.service \\
  /etc/systemd/system/
mkdir -p /etc/systemd/system/nanoclaw-sandboxd.service.d
cp /tmp/units/override.conf /etc/systemd/system/nanoclaw-sandboxd.service.d/
systemctl daemon-reload
systemctl start nanoclaw-sandboxd.socket
"""


def tool_users(groups: Mapping[str, int]) -> str:
    """Shell, run as root in a machine: each group's tool user and group (the same ID) as
    sysusers would make them, and its workspace, the tool user's own."""
    pairs = " ".join(f"{name}:{uid}" for name, uid in groups.items())
    return f"""for g in {pairs}; do
  name=${{g%%:*}} id=${{g##*:}}
  groupadd --gid $id nanoclaw-tool-$name
  useradd --uid $id --gid $id --no-create-home --shell /usr/sbin/nologin nanoclaw-tool-$name
  mkdir -p /var/lib/nanoclaw/groups/$name
  chown $id:$id /var/lib/nanoclaw/groups/$name
done
"""


def require_machine() -> None:
    """Fail the test loudly when machines cannot run here, or skip it when
    NANOCLAW_ALLOW_NO_MACHINE=1 says that is expected (e.g. on a laptop without root)."""
    reason = machine_available()
    if reason is None:
        return
    if os.environ.get("NANOCLAW_ALLOW_NO_MACHINE") == "1":
        print(f"\nSKIPPING machine tests: {reason} (NANOCLAW_ALLOW_NO_MACHINE=1)")
        pytest.skip(reason)
    pytest.fail(
        f"cannot boot a test machine: {reason}. Run as root on Linux, or set "
        "NANOCLAW_ALLOW_NO_MACHINE=1 to skip these tests instead.",
        pytrace=False,
    )


class Machine(NspawnMachine, DriverApi):
    """One systemd-nspawn container booted from the cached rootfs, as in NixOS tests."""

    command_timeout = DriverApi.command_timeout


def median_seconds(machine: Machine, command: str, runs: int = 20) -> float:
    """The median wall time of `succeed(command)`, nsenter included."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        machine.succeed(command)
        times.append(time.perf_counter() - began)
    return statistics.median(times)
