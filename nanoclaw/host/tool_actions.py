"""What the agent's host tools do (send_message, send_file, register_group, write_memory), on behalf
of the group whose tool server called them: the group comes from the server instance it
was built for, never from anything the model says. A refusal (ToolRefused) is shown to
the model as the tool's result, so it can act on it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nanoclaw.host.config import ConfigError, GroupConfig
from nanoclaw.host.file_out import FileSender
from nanoclaw.host.groups import GroupRegistry
from nanoclaw.host.host_tools import ToolRefused
from nanoclaw.host.memory import Memory, MemoryRefused

log = logging.getLogger(__name__)

# (source group, text, destination room): posted within the source's run, if it has one.
Post = Callable[[str, str, str], Awaitable[None]]


class Joiner(Protocol):
    async def ensure_joined(self, room_id: str) -> None: ...


class HostToolActions:
    def __init__(
        self, groups: GroupRegistry, memory: Memory, channel: Joiner, post: Post, files: FileSender
    ) -> None:
        self._groups = groups
        self._memory = memory
        self._channel = channel
        self._post = post
        self._files = files

    async def send_message(self, source: str, text: str, target: str | None) -> str:
        destination = self._destination(source, target)
        await self._post(source, text, destination.room_id)
        return f"sent to {destination.folder}"

    async def send_file(
        self, source: str, path: str, caption: str | None, target: str | None
    ) -> str:
        destination = self._destination(source, target)
        sent = await self._files.send(source, path, caption, destination.room_id)
        return f"{sent} to {destination.folder}"

    def _destination(self, source: str, target: str | None) -> GroupConfig:
        """The source's own group, or (main group only) the target group."""
        origin = self._groups.get(source)
        if origin is None:
            raise ToolRefused(f"group {source} no longer exists")
        if not target or target == source:
            return origin
        if not origin.main:
            raise ToolRefused("only the main group may send to another group's room")
        found = self._groups.get(target)
        if found is None:
            known = ", ".join(sorted(g.folder for g in self._groups.all()))
            raise ToolRefused(f"no group named {target!r}; registered groups: {known}")
        return found

    async def register_group(self, source: str, folder: str, definition: dict[str, Any]) -> str:
        origin = self._groups.get(source)
        if origin is None or not origin.main:
            raise ToolRefused("only the main group may register groups")
        try:
            group = self._groups.register(folder, definition)
        except (ConfigError, ValueError) as exc:
            raise ToolRefused(f"cannot register {folder!r}: {exc}") from exc
        await self._channel.ensure_joined(group.room_id)
        mode = (
            "every message"
            if not group.requires_trigger
            else f"messages starting with {group.trigger!r}"
        )
        return f"registered group {folder} for room {group.room_id}; it answers {mode}"

    async def write_memory(self, source: str, scope: str, content: str) -> str:
        origin = self._groups.get(source)
        if origin is None:
            raise ToolRefused(f"group {source} no longer exists")
        try:
            path = self._memory.write(source, origin.main, scope, content)
        except MemoryRefused as refusal:
            raise ToolRefused(str(refusal)) from refusal
        log.info("memory written: %s", scope, extra={"group": source})
        return f"saved {len(content.encode())} bytes to the {scope} memory ({path.name})"
