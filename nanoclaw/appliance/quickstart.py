"""The Quickstart's Matrix side: the owner and bot accounts and the rooms, made once.

`nanoclaw up` (nanoclaw/appliance/up.py) starts the embedded Synapse and calls `prepare`;
`nanoclaw chat` reads the same state file to log in as the owner. Accounts, tokens and
room IDs are kept in `DATA/quickstart.json`, mode 0600, so a second run reuses them.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nio import AsyncClient, RoomCreateError

from nanoclaw.appliance.homeserver import Account, EmbeddedHomeserver
from nanoclaw.appliance.machine import ApplianceError

STATE_FILE = "quickstart.json"
# Rooms the Quickstart makes: the owners' main room, and one ordinary group to show how a
# second room gets its own memory, workspace and tool user.
ROOMS = {"main": "nanoclaw", "example": "nanoclaw example group"}
# The encryption event every room is created with, as Element does for new rooms.
ENCRYPTED = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
# quickstart.json's layout: the bot's device of an older layout had its crypto store
# elsewhere, so it is logged in again (a new device) rather than reused.
LAYOUT = 2


@dataclass
class QuickstartState:
    homeserver: str
    owner: Account
    bot: Account
    rooms: dict[str, str] = field(default_factory=dict)  # group folder -> room ID

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": LAYOUT,
            "homeserver": self.homeserver,
            "owner": asdict(self.owner),
            "nanoclaw": asdict(self.bot),
            "rooms": self.rooms,
        }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (directories made 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def load_state(data_dir: Path) -> QuickstartState:
    """The accounts and rooms of an earlier `nanoclaw up` in `data_dir`."""
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return QuickstartState(
            raw["homeserver"], Account(**raw["owner"]), Account(**raw["nanoclaw"]), raw["rooms"]
        )
    except FileNotFoundError:
        raise ApplianceError(f"no {path}: run `scripts/up` first") from None
    except (KeyError, TypeError, ValueError) as err:
        raise ApplianceError(f"{path} is not from this version of `nanoclaw up`: {err}") from None


async def prepare(homeserver: EmbeddedHomeserver, data_dir: Path) -> QuickstartState:
    """The owner and bot accounts and every room of ROOMS, made where missing; saved."""
    path = data_dir / STATE_FILE
    raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    owner = await _account(homeserver, raw.get("owner"), "owner")
    bot_state = raw.get("nanoclaw")
    if raw.get("layout") != LAYOUT and bot_state is not None:
        bot_state = {**bot_state, "access_token": ""}  # log in again: a device of its own
    bot = await _account(homeserver, bot_state, "nanoclaw")
    rooms: dict[str, str] = dict(raw.get("rooms", {}))
    if "room_id" in raw:  # the first layout had the main room only
        rooms.setdefault("main", raw["room_id"])
    state = QuickstartState(homeserver.url, owner, bot, rooms)
    for folder, name in ROOMS.items():
        if folder not in rooms:
            rooms[folder] = await _create_room(homeserver.url, owner, bot, name)
            write_private(path, json.dumps(state.to_json(), indent=2))  # no room made twice
    write_private(path, json.dumps(state.to_json(), indent=2))
    return state


async def _account(
    homeserver: EmbeddedHomeserver, saved: dict[str, str] | None, localpart: str
) -> Account:
    if saved and saved.get("access_token"):
        return Account(**saved)
    password = saved["password"] if saved else secrets.token_urlsafe(18)
    return await homeserver.register(localpart, password)


async def _create_room(url: str, owner: Account, bot: Account, name: str) -> str:
    client = AsyncClient(url, owner.user_id, device_id=owner.device_id)
    client.access_token = owner.access_token
    try:
        created = await client.room_create(
            name=name, invite=[bot.user_id], initial_state=[ENCRYPTED]
        )
        if isinstance(created, RoomCreateError):
            raise ApplianceError(f"could not create the room {name!r}: {created.message}")
        return str(created.room_id)
    finally:
        await client.close()
