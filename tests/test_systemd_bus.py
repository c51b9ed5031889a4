"""The broker's D-Bus client against a real systemd (nspawn): what it reads of a unit's
life must be what happened, however busy the machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.machine import REPO, SOURCE, Machine, require_machine, rootfs

# Starts a unit whose start job must wait 3 s behind another (After=), then asks how it
# ended. A unit with a queued start job is "inactive", like one that has already ended.
QUEUED = f"""
import asyncio, sys
sys.path.insert(0, {SOURCE!r})
from nanoclaw.broker.systemd_bus import Systemd

def unit(command, *extra):
    return (
        ("ExecStart", "a(sasb)", (("/bin/sh", ("/bin/sh", "-c", command), False),)),
        ("CollectMode", "s", "inactive-or-failed"),
        *extra,
    )

async def main():
    bus = await Systemd.connect()
    await bus.start_transient(
        "blocker.service", unit("sleep 3", ("Type", "s", "oneshot")), keep_loaded=False
    )
    after = ("After", "as", ("blocker.service",))
    path = await bus.start_transient("queued.service", unit("exit 3", ("Type", "s", "exec"), after))
    outcome = await bus.wait_inactive(path)
    print(outcome.result, outcome.exit_status)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    require_machine()
    with Machine(rootfs(), "bus", binds=[(REPO, SOURCE, False)]) as m:
        yield m


def test_a_unit_whose_start_is_still_queued_is_not_taken_for_ended(machine: Machine) -> None:
    # Read before it ran, it looked like a success (exit 0): the broker's start-up probe
    # once took "IP filtering holds" for "it does not" that way, on a slow VM.
    assert machine.succeed(f"python3 - <<'EOF'\n{QUEUED}\nEOF").split() == ["exit-code", "3"]
