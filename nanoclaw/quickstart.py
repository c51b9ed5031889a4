"""`nanoclaw up`: the host on its embedded defaults, for a first look on any machine.

Starts a local Synapse (loopback only), creates an owner and a bot account and the main
room once, writes a config file that points at them, and runs the real host. A second run
reuses all of it. Accounts and tokens are kept in the data directory, mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import asdict
from pathlib import Path

from nio import AsyncClient, RoomCreateError

from nanoclaw.config import load_config
from nanoclaw.homeserver import Account, EmbeddedHomeserver
from nanoclaw.host import run_host

log = logging.getLogger(__name__)

CONFIG_TEMPLATE = """\
# Written by `nanoclaw up`. Edit freely; it is not overwritten while it exists.
data_dir = "{data_dir}"
assistant_name = "Andy"

[matrix]
homeserver = "{homeserver}"
user_id = "{bot}"
access_token_file = "{token_file}"
owners = ["{owner}"]

[model]
{model}

[groups.main]
room_id = "{room_id}"
main = true
"""


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)


async def _account(hs: EmbeddedHomeserver, state: dict[str, dict[str, str]], name: str) -> Account:
    if name not in state:
        account = await hs.register(name, secrets.token_urlsafe(18))
        state[name] = asdict(account)
    return Account(**state[name])


async def _main_room(hs: EmbeddedHomeserver, owner: Account, bot: Account) -> str:
    client = AsyncClient(hs.url, owner.user_id, device_id=owner.device_id)
    client.access_token = owner.access_token
    try:
        created = await client.room_create(name="nanoclaw", invite=[bot.user_id], is_direct=True)
        if isinstance(created, RoomCreateError):
            raise RuntimeError(f"could not create the main room: {created.message}")
        return str(created.room_id)
    finally:
        await client.close()


async def quickstart(data_dir: Path, port: int) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_file = data_dir / "quickstart.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    homeserver = EmbeddedHomeserver(data_dir / "homeserver", port=port)
    homeserver.prepare()
    async with homeserver:
        owner = await _account(homeserver, state, "owner")
        bot = await _account(homeserver, state, "nanoclaw")
        if "room_id" not in state:
            state["room_id"] = await _main_room(homeserver, owner, bot)
        _write_secret(state_file, json.dumps(state, indent=2))
        config_file = data_dir / "config.toml"
        if not config_file.exists():
            config_file.write_text(
                _render_config(data_dir, homeserver.url, owner, bot, state["room_id"])
            )
        config = load_config(config_file)
        print(
            _banner(
                homeserver.url,
                owner,
                state["room_id"],
                config_file,
                config.model.api_key is not None,
            ),
            flush=True,
        )
        await run_host(config)


def _render_config(data_dir: Path, url: str, owner: Account, bot: Account, room_id: str) -> str:
    token_file = data_dir / "secrets" / "matrix-token"
    _write_secret(token_file, bot.access_token)
    model_lines = []
    if os.environ.get("ANTHROPIC_API_KEY"):
        key_file = data_dir / "secrets" / "anthropic-key"
        _write_secret(key_file, os.environ["ANTHROPIC_API_KEY"])
        model_lines.append(f'api_key_file = "{key_file}"')
    if os.environ.get("ANTHROPIC_BASE_URL"):
        model_lines.append(f'base_url = "{os.environ["ANTHROPIC_BASE_URL"]}"')
    return CONFIG_TEMPLATE.format(
        data_dir=data_dir,
        homeserver=url,
        bot=bot.user_id,
        token_file=token_file,
        owner=owner.user_id,
        model="\n".join(model_lines),
        room_id=room_id,
    )


def _banner(url: str, owner: Account, room_id: str, config_file: Path, has_key: bool) -> str:
    key_note = (
        ""
        if has_key
        else "\n  No model key: set ANTHROPIC_API_KEY (and optionally ANTHROPIC_BASE_URL),\n"
        "  delete the config file and run again, or edit [model] in it.\n"
    )
    return f"""
nanoclaw is up.
  homeserver  {url}  (Synapse on 127.0.0.1, data in {config_file.parent})
  log in as   {owner.user_id}  password {owner.password}
  main room   {room_id}  (already joined by you; the bot joins on start)
  config      {config_file}
Talk to it from any Matrix client (Element: custom homeserver {url}).{key_note}
Ctrl-C stops it; data is kept for the next run.
"""
