"""The registry of groups: declared ones from the config file, plus those registered at
runtime by the main group. The store is the single source; config groups are written
into it at start, so both kinds survive restarts the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from nanoclaw.host.config import Config, GroupConfig, validate_group
from nanoclaw.host.store import Store

log = logging.getLogger(__name__)


def definition(group: GroupConfig) -> dict[str, Any]:
    """The stored form of a group, in the config file's own keys."""
    data: dict[str, Any] = {
        "room_id": group.room_id,
        "main": group.main,
        "trigger": group.trigger,
        "requires_trigger": group.requires_trigger,
        "allowed_senders": list(group.allowed_senders),
    }
    for key in ("model", "base_url"):
        if getattr(group, key) is not None:
            data[key] = getattr(group, key)
    if group.subagents:
        data["subagents"] = {sub.name: sub.definition() for sub in group.subagents}
    return data


class GroupRegistry:
    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
        self._by_folder: dict[str, GroupConfig] = {}
        self._by_room: dict[str, GroupConfig] = {}

    def load(self) -> None:
        """Write declared groups into the store, then read every group back."""
        for group in self._config.groups:
            self._store.upsert_group(group.folder, group.room_id, definition(group), "config")
        self._store.remove_groups_not_in("config", [g.folder for g in self._config.groups])
        self._refresh()

    def _refresh(self) -> None:
        groups = [
            validate_group(row.folder, row.definition, self._config.assistant_name)
            for row in self._store.groups()
        ]
        self._by_folder = {g.folder: g for g in groups}
        self._by_room = {g.room_id: g for g in groups}

    def register(self, folder: str, data: dict[str, Any]) -> GroupConfig:
        """Add a runtime group. Raises ConfigError or ValueError with a reason to show."""
        if folder in self._by_folder:
            raise ValueError(f"a group named {folder} already exists")
        if data.get("main"):
            raise ValueError("only the configuration file can declare the main group")
        for key in ("base_url", "subagents"):  # the API key goes wherever base_url points
            if key in data:
                raise ValueError(f"only the configuration file can set a group's {key}")
        group = validate_group(folder, {**data, "main": False}, self._config.assistant_name)
        owner = self._by_room.get(group.room_id)
        if owner is not None:
            raise ValueError(f"room {group.room_id} already belongs to group {owner.folder}")
        self._store.upsert_group(folder, group.room_id, definition(group), "runtime")
        self._refresh()
        log.info("registered group %s", folder, extra={"group": folder, "room_id": group.room_id})
        return group

    def get(self, folder: str) -> GroupConfig | None:
        return self._by_folder.get(folder)

    def for_room(self, room_id: str) -> GroupConfig | None:
        return self._by_room.get(room_id)

    def all(self) -> list[GroupConfig]:
        return list(self._by_folder.values())
