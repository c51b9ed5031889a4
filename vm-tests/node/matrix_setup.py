"""What nanoclaw.service needs on the NixOS node (node.nix) that exists only at run time:
the bot's and the owner's accounts on the node's Synapse, the owners' room with the bot
invited, and the host's configuration file: the module's /etc/nanoclaw/config.toml with
that room's ID and the scripted model's URL put in. Files go to /run/nanoclaw-vm.

Usage: matrix_setup.py HOMESERVER SHARED_SECRET MODEL_URL_FILE GROUP"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

RUN = Path("/run/nanoclaw-vm")
# The filesystem scenario's stand-in for the database (node.nix): no SQLite file.
STAND_IN_DATABASE = Path("/var/lib/nanoclaw/nanoclaw.db")


def call(homeserver: str, method: str, path: str, body: Any = None, token: str = "") -> Any:
    request = urllib.request.Request(
        homeserver + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def register(homeserver: str, secret: str, user: str) -> str:
    """A new account's access token, by Synapse's shared-secret registration."""
    path = "/_synapse/admin/v1/register"
    nonce = call(homeserver, "GET", path)["nonce"]
    mac = hmac.new(secret.encode(), f"{nonce}\0{user}\0password\0notadmin".encode(), hashlib.sha1)
    body = {"nonce": nonce, "username": user, "password": "password", "mac": mac.hexdigest()}
    token: str = call(homeserver, "POST", path, body)["access_token"]
    return token


def write(name: str, text: str, mode: int) -> None:
    path = RUN / name
    path.write_text(text)
    path.chmod(mode)


def main() -> None:
    homeserver, secret, model_url_file, group = sys.argv[1:5]
    config = tomllib.loads(Path("/etc/nanoclaw/config.toml").read_text())
    bot = register(homeserver, secret, "nanoclaw")
    owner = register(homeserver, secret, "owner")
    room = call(
        homeserver,
        "POST",
        "/_matrix/client/v3/createRoom",
        {"name": group, "invite": [config["matrix"]["user_id"]]},
        owner,
    )["room_id"]
    for _ in range(600):
        if Path(model_url_file).exists():
            break
        time.sleep(0.1)
    config["groups"][group]["room_id"] = room
    config.setdefault("model", {})["base_url"] = Path(model_url_file).read_text()
    write("matrix-token", bot, 0o400)
    write("anthropic-key", "sk-vm-test", 0o400)
    write("owner-token", owner, 0o400)
    write("room-id", room, 0o444)
    write("config.json", json.dumps(config), 0o444)
    if STAND_IN_DATABASE.exists() and STAND_IN_DATABASE.read_bytes() == b"database":
        STAND_IN_DATABASE.unlink()


if __name__ == "__main__":
    main()
