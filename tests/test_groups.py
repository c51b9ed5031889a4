"""The group registry: declared groups, runtime registration and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw.host.config import ConfigError, parse_config
from nanoclaw.host.groups import GroupRegistry
from nanoclaw.host.store import Store

BASE = {
    "matrix": {
        "homeserver": "http://127.0.0.1:1",
        "user_id": "@bot:localhost",
        "access_token_file": "/run/token",
        "owners": ["@me:localhost"],
    },
}


def registry(tmp_path: Path, groups: dict[str, dict[str, object]]) -> tuple[GroupRegistry, Store]:
    store = Store(tmp_path / "db.sqlite")
    reg = GroupRegistry(parse_config({**BASE, "groups": groups}), store)
    reg.load()
    return reg, store


def test_declared_groups_round_trip_through_the_store(tmp_path: Path) -> None:
    reg, _ = registry(
        tmp_path,
        {
            "main": {"room_id": "!m:localhost", "main": True},
            "fam": {"room_id": "!f:localhost", "model": "m-1", "base_url": "http://127.0.0.1:9/"},
        },
    )
    fam = reg.get("fam")
    assert fam is not None and fam.base_url == "http://127.0.0.1:9" and fam.model == "m-1"
    assert reg.for_room("!m:localhost") == reg.get("main")


def test_runtime_groups_survive_and_config_groups_follow_the_file(tmp_path: Path) -> None:
    reg, store = registry(tmp_path, {"main": {"room_id": "!m:localhost", "main": True}})
    reg.register("ops", {"room_id": "!o:localhost"})
    again = GroupRegistry(parse_config({**BASE, "groups": {}}), store)
    again.load()
    assert [g.folder for g in again.all()] == ["ops"], "declared main removed, runtime ops kept"


@pytest.mark.parametrize(
    ("folder", "data", "error"),
    [
        (
            "ops",
            {"room_id": "!o:localhost", "main": True},
            "only the configuration file can declare",
        ),
        ("ops", {"room_id": "!o:localhost", "base_url": "http://evil.example"}, "base_url"),
        ("main", {"room_id": "!o:localhost"}, "already exists"),
        ("ops", {"room_id": "!m:localhost"}, "already belongs to group main"),
    ],
)
def test_registration_refusals(
    tmp_path: Path, folder: str, data: dict[str, object], error: str
) -> None:
    reg, _ = registry(tmp_path, {"main": {"room_id": "!m:localhost", "main": True}})
    with pytest.raises(ValueError, match=error):
        reg.register(folder, data)


def test_registration_validates_like_the_file(tmp_path: Path) -> None:
    reg, _ = registry(tmp_path, {"main": {"room_id": "!m:localhost", "main": True}})
    with pytest.raises(ConfigError, match=r"groups\.Ops: folder name must match"):
        reg.register("Ops", {"room_id": "!o:localhost"})
    with pytest.raises(ConfigError, match=r"groups\.ops\.colour: unknown key"):
        reg.register("ops", {"room_id": "!o:localhost", "colour": "red"})
