"""Bind sources no tool can change between the broker's check and systemd's bind:
no nesting, and no ancestor a tool user can write."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.policy_file import parse_policy

# --- bind sources no tool can change between the check and the bind --------------------
from tests.support.policies import (
    MINIMAL,
    POLICY_PATH,
    REPO,
    at,
    outside_tmp,  # noqa: F401 -- tmp_path outside /tmp
    refusal,
    refused,
)


def entry(host: str, sandbox: str = "/workspace/m", **extra: object) -> dict[str, Any]:
    return {"host": host, "sandbox": sandbox, **extra}


def two_groups(*mounts: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A policy of groups a (uid 61000) and b (61001), each with the mounts given to it."""
    groups: dict[str, Any] = {"a": {"uid": 61000, "mounts": []}, "b": {"uid": 61001, "mounts": []}}
    for group, entry in mounts:
        groups[group]["mounts"].append(entry)
    return {**MINIMAL, "groups": groups}


@pytest.mark.parametrize(
    ("first", "second", "relation"),
    [
        ("/srv/proj", "/srv/proj/sub", "is inside"),
        ("/srv/proj/sub", "/srv/proj", "contains"),
    ],
)
@pytest.mark.parametrize("same_group", [True, False])
def test_mounts_may_not_nest_within_or_across_groups(
    first: str, second: str, relation: str, same_group: bool
) -> None:
    # The red-team case: /srv/proj writable and /srv/proj/sub read-only; the inner one was
    # writable through the outer, and its source swappable by whoever wrote the outer.
    data = two_groups(
        ("a", entry(first, "/workspace/proj", writable=True)),
        ("a" if same_group else "b", entry(second, "/workspace/sub")),
    )
    key = "groups.a.mounts[1].host" if same_group else "groups.b.mounts[0].host"
    refused(data, key, f"{second} {relation} groups.a.mounts[0].host {first}", "may not nest")


def test_one_group_may_not_mount_a_directory_twice() -> None:
    data = two_groups(
        ("a", entry("/srv/proj", "/workspace/one", writable=True)),
        ("a", entry("/srv/proj", "/workspace/two")),
    )
    refused(data, "groups.a.mounts[1].host", "/srv/proj is groups.a.mounts[0].host")


def test_two_groups_may_share_one_directory() -> None:
    data = two_groups(
        ("a", entry("/srv/shared", "/workspace/shared", writable=True)),
        ("b", entry("/srv/shared", "/workspace/shared")),
    )
    policy = parse_policy(data, POLICY_PATH)
    assert policy.group("b").mounts[0].host == "/srv/shared"


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """/<tmp>/top/proj, made of directories root owns and only root may write."""
    (tmp_path / "top" / "proj").mkdir(parents=True)
    for directory in (tmp_path, tmp_path / "top"):
        os.chown(directory, 0, 0)
        directory.chmod(0o755)
    return tmp_path


def with_source(path: Path, **extra: object) -> dict[str, Any]:
    return two_groups(("a", entry(str(path), "/workspace/proj", **extra)))


def test_a_source_whose_ancestors_only_root_writes_is_accepted(sources: Path) -> None:
    # The control for the refusals below: the same tree, nothing changed in it.
    policy = parse_policy(with_source(sources / "top" / "proj", writable=True), POLICY_PATH)
    assert policy.group("a").mounts[0].host == str(sources / "top" / "proj")


@pytest.mark.parametrize(
    ("change", "how"),
    [
        (lambda top: os.chown(top, 61001, 61001), "owns"),  # another group's tool user
        (lambda top: os.chown(top, 61000, 0), "owns"),  # the group's own
        (lambda top: (os.chown(top, 0, 61000), top.chmod(0o775)), "may write to"),
        (lambda top: top.chmod(0o757), "may write to"),
    ],
    ids=["owned-by-another-group", "owned-by-the-group", "group-writable", "world-writable"],
)
def test_a_source_below_a_directory_a_tool_user_can_write_is_refused(
    sources: Path, change: Any, how: str
) -> None:
    top = sources / "top"
    change(top)
    error = refusal(with_source(top / "proj"))
    assert error.key == "groups.a.mounts[0].host"
    assert "tool user (uid 6100" in error.reason and f"{how} {top}," in error.reason
    assert "swap a path component" in error.reason


def test_a_read_only_path_below_a_directory_a_tool_user_owns_is_refused(sources: Path) -> None:
    os.chown(sources / "top", 61001, 61001)
    data = at(two_groups(), ("groups", "a", "read_only_paths"), [str(sources / "top" / "proj")])
    refused(data, "groups.a.read_only_paths[0]", "group b's tool user (uid 61001) owns")


def test_a_sticky_directory_is_safe_unless_a_tool_user_owns_the_next_component(
    sources: Path,
) -> None:
    top = sources / "top"
    top.chmod(0o1777)  # like /tmp: anyone creates, only an entry's owner renames it
    assert parse_policy(with_source(top / "proj"), POLICY_PATH).group("a").mounts
    os.chown(top / "proj", 61000, 61000)
    refused(with_source(top / "proj"), "groups.a.mounts[0].host", f"may write to {top},")


def test_a_supplementary_group_of_a_tool_user_counts(
    sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd gives a unit its user's supplementary groups, from the user database; here
    # group a's tool user is in group 4242, which may write to top.
    top = sources / "top"
    os.chown(top, 0, 4242)
    top.chmod(0o775)
    assert parse_policy(with_source(top / "proj"), POLICY_PATH).group("a").mounts
    users = {61000: pwd.struct_passwd(("tool-a", "x", 61000, 61000, "", "/", "/bin/false"))}

    def getpwuid(uid: int) -> pwd.struct_passwd:
        return users[uid]  # KeyError for the others, as for a user the database lacks

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(os, "getgrouplist", lambda name, gid: [gid, 4242])
    refused(with_source(top / "proj"), "groups.a.mounts[0].host", f"may write to {top},")


@pytest.fixture(scope="module")
def setfacl() -> str:
    """setfacl, installed with the project's script when missing."""
    subprocess.run([REPO / "scripts" / "host-deps"], check=True)
    found = shutil.which("setfacl")
    assert found, "scripts/host-deps succeeded but setfacl is not on PATH"
    return found


@pytest.mark.parametrize(
    ("entries", "refused_"),
    [
        ("u:61000:rwx", True),
        ("g:61001:rwx", True),
        ("u:61000:rwx,m::r-x", False),  # the mask takes write away
        ("u:61000:r-x", False),
    ],
)
def test_a_posix_acl_that_lets_a_tool_user_write_counts(
    setfacl: str, sources: Path, entries: str, refused_: bool
) -> None:
    top = sources / "top"
    subprocess.run([setfacl, "-m", entries, str(top)], check=True)
    if refused_:
        refused(with_source(top / "proj"), "groups.a.mounts[0].host", f"may write to {top},")
    else:
        assert parse_policy(with_source(top / "proj"), POLICY_PATH).group("a").mounts


def test_check_binds_catches_an_ancestor_made_writable_after_loading(sources: Path) -> None:
    # The broker re-runs check_binds at each unit start: the owner's later chown counts.
    policy = parse_policy(with_source(sources / "top" / "proj"), POLICY_PATH)
    os.chown(sources / "top", 61000, 61000)
    with pytest.raises(ConfigError, match=re.escape("tool user (uid 61000) owns")):
        policy.check_binds(policy.group("a"), policy.tool_users())


def test_protect_defaults_to_true_and_may_be_switched_off() -> None:
    data = two_groups(
        ("a", entry("/srv/one", "/workspace/one")),
        ("a", entry("/srv/two", "/workspace/two", protect=False)),
    )
    mounts = parse_policy(data, POLICY_PATH).group("a").mounts
    assert [m.protect for m in mounts] == [True, False]
    refused(
        two_groups(("a", entry("/srv/one", protect="no"))),
        "groups.a.mounts[0].protect",
        "must be true or false",
    )
