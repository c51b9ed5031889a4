"""Host paths in the policy: checked as written and with symlinks resolved, so a link
leads around no rule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.policy import (
    ALWAYS_HIDDEN,
)
from nanoclaw.broker.policy_file import parse_policy

# --- symlinks -------------------------------------------------------------------------
from tests.support.policies import (
    FULL,
    POLICY_PATH,
    at,
    mount,
    outside_tmp,  # noqa: F401 -- tmp_path outside /tmp
    refusal,
    refused,
)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Any]:
    """A data dir, a protected dir and a policy file under tmp_path, with a policy naming them."""
    for name in ("data", "protected", "keys/.ssh", "plain", "etc"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "etc" / "policy.json").write_text("{}")
    return {
        "version": 1,
        "data_dir": str(tmp_path / "data"),
        "protected_paths": [str(tmp_path / "protected")],
        "groups": {"g": {"uid": 61000, "mounts": []}},
    }


def link_mount(tree: dict[str, Any], tmp_path: Path, link: str, target: Path) -> dict[str, Any]:
    (tmp_path / link).symlink_to(target)
    return at(
        tree, ("groups", "g", "mounts"), [{"host": str(tmp_path / link), "sandbox": "/workspace/x"}]
    )


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("data", "the data directory"),
        ("data/groups/other", "the data directory"),
        ("protected", "protected path"),
        ("etc/policy.json", "the policy file"),
        ("etc", "the policy file"),
        ("keys/.ssh", "blocked pattern '.ssh'"),
        ("keys/.ssh/id_rsa", "blocked pattern '.ssh'"),
        ("/", "whole host file system"),
        ("/var/lib", "path hidden from every tool"),
        ("/proc/self", "kernel file system"),
    ],
)
def test_symlinks_are_resolved_before_every_check(
    tree: dict[str, Any], tmp_path: Path, target: str, fragment: str
) -> None:
    data = link_mount(tree, tmp_path, "innocent", tmp_path / target)
    error = refusal(data, str(tmp_path / "etc" / "policy.json"))
    assert error.key == "groups.g.mounts[0].host"
    assert fragment in error.reason and "(resolved: " in error.reason, str(error)


def test_a_path_that_cannot_be_resolved_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def realpath(path: str, strict: bool = False) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os.path, "realpath", realpath)
    refused(mount("/srv/x"), "groups.g.mounts[0].host", "cannot resolve /srv/x: Permission denied")


def test_a_chain_of_symlinks_is_followed(tree: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "hop").symlink_to(tmp_path / "data")
    data = link_mount(tree, tmp_path, "innocent", tmp_path / "hop" / "groups")
    assert "the data directory" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_symlinked_parent_component_is_resolved(tree: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "keys" / ".ssh" / "sub").mkdir()
    (tmp_path / "k").symlink_to(tmp_path / "keys")
    data = at(
        tree,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "k/.ssh/sub"), "sandbox": "/workspace/x"}],
    )
    assert "'.ssh'" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_blocked_name_on_the_link_itself_is_refused(tree: dict[str, Any], tmp_path: Path) -> None:
    # The written path has the blocked component, the resolved one does not.
    data = link_mount(tree, tmp_path, ".aws", tmp_path / "plain")
    assert "'.aws'" in refusal(data, str(tmp_path / "p.json")).reason


def test_protected_paths_that_are_symlinks_protect_their_target(
    tree: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "real-secret").mkdir()
    (tmp_path / "protected-link").symlink_to(tmp_path / "real-secret")
    data = at(tree, ("protected_paths",), [str(tmp_path / "protected-link")])
    data = at(
        data,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "real-secret/x"), "sandbox": "/workspace/x"}],
    )
    assert "a protected path" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_symlinked_data_dir_protects_its_target(tree: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "data-link").symlink_to(tmp_path / "data")
    data = at(tree, ("data_dir",), str(tmp_path / "data-link"))
    data = at(
        data,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "data"), "sandbox": "/workspace/x"}],
    )
    assert "the data directory" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_good_symlink_is_stored_resolved(tree: dict[str, Any], tmp_path: Path) -> None:
    data = link_mount(tree, tmp_path, "photos", tmp_path / "plain")
    policy = parse_policy(data, str(tmp_path / "p.json"))
    assert policy.group("g").mounts[0].host == str(tmp_path / "plain")


def test_check_host_path_catches_a_link_swapped_after_loading(
    tree: dict[str, Any], tmp_path: Path
) -> None:
    data = link_mount(tree, tmp_path, "photos", tmp_path / "plain")
    policy = parse_policy(data, str(tmp_path / "p.json"))
    assert policy.check_host_path(str(tmp_path / "photos"), "x") == str(tmp_path / "plain")
    (tmp_path / "photos").unlink()
    (tmp_path / "photos").symlink_to(tmp_path / "data")
    with pytest.raises(ConfigError, match="the data directory"):
        policy.check_host_path(str(tmp_path / "photos"), "x")


def test_missing_host_paths_are_still_judged(tree: dict[str, Any], tmp_path: Path) -> None:
    data = at(
        tree,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "nope/.ssh"), "sandbox": "/workspace/x"}],
    )
    assert "'.ssh'" in refusal(data, str(tmp_path / "p.json")).reason
    data = at(
        tree,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "nope/y"), "sandbox": "/workspace/x"}],
    )
    assert parse_policy(data, str(tmp_path / "p.json")).group("g").mounts[0].host.endswith("nope/y")


def test_the_hidden_paths_are_what_the_units_hide() -> None:
    policy = parse_policy(FULL, POLICY_PATH)
    sealed = [path for _, path in policy.sealed_paths()]
    assert sealed[:4] == ["/var/lib/nanoclaw", "/etc/nanoclaw", "/run/credentials", POLICY_PATH]
    assert set(ALWAYS_HIDDEN) | {"/proc", "/sys", "/dev"} <= set(sealed)
