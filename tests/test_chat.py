"""`nanoclaw chat` against the real host and Synapse, without a machine (no root needed).

The appliance's end-to-end test (tests/test_quickstart.py) drives it too; here it talks to
a host started as in the integration tests, in an encrypted room, from a device of the
owner's own, as it does with the Quickstart's state file.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from nanoclaw.appliance.homeserver import Account
from nanoclaw.appliance.quickstart import LAYOUT, STATE_FILE
from tests.support.world import World


def write_state(data: Path, world: World, owner: Account) -> None:
    state = {
        "layout": LAYOUT,
        "homeserver": world.homeserver.url,
        "owner": asdict(owner),
        "nanoclaw": asdict(world.bot),
        "rooms": {"main": world.main_room},
    }
    data.mkdir(parents=True, exist_ok=True)
    (data / STATE_FILE).write_text(json.dumps(state))


async def chat(data: Path, stdin: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nanoclaw.cli",
        "chat",
        "--data-dir",
        str(data),
        "--wait",
        "60",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_lines_in_replies_out_in_an_encrypted_room(world: World, tmp_path: Path) -> None:
    await world.setup(encrypted=True)
    await world.start_host()
    # A device of its own, as the Quickstart's owner has one apart from other clients.
    owner = await world.homeserver.register(
        world.owner.user_id[1:].split(":")[0], "password-" + world.tag
    )
    assert owner.device_id != world.owner.device_id
    data = tmp_path / "quickstart"
    write_state(data, world, owner)
    status, out, err = await chat(data, "\nhello there\n")
    assert status == 0, err
    assert out == "Andy: echo: hello there\n", out + err
    assert world.owner.user_id in err and "Ctrl-D ends" in err
    assert world.alice.client.rooms[world.main_room].encrypted
    # A second run reuses its crypto store (and device) and only shows what is new.
    status, out, err = await chat(data, "third\n")
    assert (status, out.count("Andy: ")) == (0, 1), out + err
    assert "third" in out and "hello" not in out


async def test_no_input_sends_nothing_and_unknown_groups_are_named(
    world: World, tmp_path: Path
) -> None:
    await world.setup()
    data = tmp_path / "quickstart"
    owner = await world.homeserver.register(
        world.owner.user_id[1:].split(":")[0], "password-" + world.tag
    )
    write_state(data, world, owner)
    assert (await chat(data, ""))[0] == 0
    status, _, err = await chat(data, "hi\n", "family")
    assert status == 1 and "no group 'family'; the groups are: main" in err


async def test_without_a_quickstart_it_says_what_to_run(tmp_path: Path) -> None:
    status, _, err = await chat(tmp_path / "nothing-here", "hi\n")
    assert status == 1 and "run `scripts/up` first" in err, err
