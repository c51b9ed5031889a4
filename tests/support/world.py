"""One test's world: fresh accounts on the shared homeserver, a main room, a config, a host."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from nanoclaw.appliance.homeserver import Account, EmbeddedHomeserver
from tests.support.host_process import HostProcess, write_config, write_secret
from tests.support.matrix_human import Human
from tests.support.scripted_model import ModelRequest, ScriptedModel

API_KEY = "sk-ant-test-key-0123456789"


def prompt_messages(request: ModelRequest) -> list[dict[str, str]]:
    """The <message> elements of the newest prompt, as the host rendered them."""
    blocks = re.findall(r"<messages[^>]*>.*?</messages>", request.last_user_text, re.S)
    if not blocks:
        return []
    root = ET.fromstring(blocks[-1])
    found = []
    for element in root.iter("message"):
        quote = element.find("quote")
        body = "".join(element.itertext()).strip()
        if quote is not None:
            body = body.replace("".join(quote.itertext()), "", 1).strip()
        found.append(
            {
                **element.attrib,
                "body": body,
                "quote": "".join(quote.itertext()) if quote is not None else "",
            }
        )
    return found


def echo(request: ModelRequest) -> str:
    """Default script: answer the newest message with 'echo: <body>'."""
    if request.tool_results:
        return "tool said: " + request.tool_results[-1]["content"]
    messages = prompt_messages(request)
    return "echo: " + (messages[-1]["body"] if messages else "?")


class World:
    def __init__(self, homeserver: EmbeddedHomeserver, model: ScriptedModel, root: Path) -> None:
        self.homeserver = homeserver
        self.model = model
        self.root = root
        self.tag = uuid.uuid4().hex[:8]
        self.hosts: list[HostProcess] = []
        self.humans: list[Human] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {}

    async def setup(self, encrypted: bool = False) -> World:
        self.owner = await self.account("owner")
        self.bot = await self.account("bot")
        self.alice = await self.human(self.owner, encrypted)
        self.main_room = await self.alice.create_room([self.bot.user_id], encrypted=encrypted)
        self.groups["main"] = {"room_id": self.main_room, "main": True}
        token = write_secret(self.root / "secrets", "matrix-token", self.bot.access_token)
        key = write_secret(self.root / "secrets", "anthropic-key", API_KEY)
        self.settings = {
            "data_dir": str(self.root / "data"),
            "assistant_name": "Andy",
            "matrix": {
                "homeserver": self.homeserver.url,
                "user_id": self.bot.user_id,
                "access_token_file": str(token),
                "owners": [self.owner.user_id],
                "encryption": True,
            },
            "model": {
                "base_url": self.model.url,
                "api_key_file": str(key),
                "max_attempts": 3,
                "retry_base_seconds": 0.2,
            },
        }
        return self

    async def account(self, role: str) -> Account:
        return await self.homeserver.register(f"{role}-{self.tag}", "password-" + self.tag)

    async def human(self, account: Account, encrypted: bool = False) -> Human:
        store = self.root / "human-stores" / account.user_id if encrypted else None
        person = await Human(self.homeserver.url, account, store).start()
        self.humans.append(person)
        return person

    def config_path(self, **overrides: Any) -> Path:
        return write_config(self.root, {**self.settings, **overrides, "groups": self.groups})

    async def start_host(self, env: dict[str, str] | None = None, **overrides: Any) -> HostProcess:
        host = HostProcess(self.config_path(**overrides), self.root / "host.log", env)
        self.hosts.append(host)
        await host.start()
        return host

    def bot_replies(self, room_id: str | None = None) -> list[str]:
        return [
            ev["content"]["body"]
            for ev in self.alice.messages_from(self.bot.user_id, room_id or self.main_room)
        ]

    async def close(self) -> None:
        for host in self.hosts:
            await host.kill()
        for person in self.humans:
            await person.close()
