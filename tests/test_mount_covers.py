"""The walk that finds what inside a mount its units must not see: the owner's tool files
in writable mounts, secrets in every mount; never following a link, within its bounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nanoclaw.broker.mount_covers import (
    MAX_COVERS,
    OWNER_TOOL_NAMES,
    SCAN_ENTRIES,
    TooManyCovers,
    scan_mount,
)
from nanoclaw.broker.policy import DEFAULT_BLOCKED_PATTERNS, Mount


def make(root: Path, *paths: str) -> None:
    for path in paths:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith("/"):
            target.mkdir(exist_ok=True)
        else:
            target.write_text("x")


def covers(host: Path, writable: bool = True, protect: bool = True) -> set[str]:
    mount = Mount(str(host), "/workspace/proj", writable, protect)
    return set(scan_mount(mount, DEFAULT_BLOCKED_PATTERNS).covers)


def test_a_writable_mount_hides_the_owners_tool_files_and_secrets(tmp_path: Path) -> None:
    make(
        tmp_path,
        ".git/hooks/post-commit",
        ".claude/settings.json",
        ".mcp.json",
        "src/.vscode/tasks.json",
        "src/lib/.envrc",
        ".env.local",
        "keys/id_rsa",
        "README.md",
        "src/main.py",
    )
    assert covers(tmp_path) == {
        "/workspace/proj/.git",
        "/workspace/proj/.claude",
        "/workspace/proj/.mcp.json",
        "/workspace/proj/src/.vscode",
        "/workspace/proj/src/lib/.envrc",
        "/workspace/proj/.env.local",
        "/workspace/proj/keys/id_rsa",
    }


def test_a_read_only_mount_hides_only_secrets(tmp_path: Path) -> None:
    # A unit cannot change a read-only mount's .git, so it may read it; never a secret.
    make(tmp_path, ".git/config", ".claude/settings.json", "credentials.json", "notes.txt")
    assert covers(tmp_path, writable=False) == {"/workspace/proj/credentials.json"}


def test_protect_false_hides_nothing(tmp_path: Path) -> None:
    make(tmp_path, ".git/config", ".env")
    assert covers(tmp_path, protect=False) == set()


def test_every_owner_tool_name_is_found(tmp_path: Path) -> None:
    make(tmp_path, *(name + "/" for name in OWNER_TOOL_NAMES))
    assert covers(tmp_path) == {f"/workspace/proj/{name}" for name in OWNER_TOOL_NAMES}


def test_the_walk_goes_three_levels_deep_and_not_into_node_modules(tmp_path: Path) -> None:
    make(tmp_path, "a/b/.git/", "a/b/c/.git/", "node_modules/x/.git/")
    assert covers(tmp_path) == {"/workspace/proj/a/b/.git"}


def test_the_walk_never_follows_a_link(tmp_path: Path) -> None:
    # A tool plants links to places full of names to hide; the walk must neither enter
    # them nor cover the links themselves (systemd refuses to mount over a symlink).
    elsewhere = tmp_path / "elsewhere"
    make(elsewhere, ".git/", "sub/.ssh/", ".env")
    mount = tmp_path / "mount"
    make(mount, "real/")
    (mount / "linked-dir").symlink_to(elsewhere)
    (mount / ".git").symlink_to(elsewhere / ".git")
    (mount / "real" / ".env").symlink_to(elsewhere / ".env")
    assert covers(mount) == set()
    # The control: the same entries, real, are covered.
    copy = tmp_path / "copy"
    make(copy, "linked-dir/sub/.ssh/", ".git/", "real/.env")
    assert covers(copy) == {
        "/workspace/proj/linked-dir/sub/.ssh",
        "/workspace/proj/.git",
        "/workspace/proj/real/.env",
    }


def test_a_name_systemd_cannot_take_is_left_alone(tmp_path: Path) -> None:
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"credentials.\xff"))
    (tmp_path / "credentials.\n").mkdir()
    (tmp_path / "credentials.ok").mkdir()
    assert covers(tmp_path) == {"/workspace/proj/credentials.ok"}


def test_the_walk_stops_after_its_budget_and_says_so(tmp_path: Path) -> None:
    for index in range(SCAN_ENTRIES + 10):
        (tmp_path / f"f{index}").touch()
    mount = Mount(str(tmp_path), "/workspace/proj", True)
    assert scan_mount(mount, DEFAULT_BLOCKED_PATTERNS).complete is False
    (tmp_path / "f0").unlink()
    for index in range(1, 20):
        (tmp_path / f"f{index}").unlink()
    assert scan_mount(mount, DEFAULT_BLOCKED_PATTERNS).complete is True


def test_too_many_entries_to_hide_refuses_the_mount(tmp_path: Path) -> None:
    for index in range(MAX_COVERS + 1):
        (tmp_path / f"repo{index}" / ".git").mkdir(parents=True)
    with pytest.raises(TooManyCovers, match="mount a narrower directory, or set protect"):
        covers(tmp_path)


def test_a_missing_mount_has_nothing_to_hide(tmp_path: Path) -> None:
    assert covers(tmp_path / "missing") == set()


def test_a_directory_that_cannot_be_looked_into_is_an_error_not_an_empty_one() -> None:
    # As a user who may enter the mount but not `locked` in it: the walk must not report
    # "nothing to hide" there.
    root = Path(tempfile.mkdtemp(prefix="nanoclaw-covers-"))
    try:
        root.chmod(0o755)
        make(root, "locked/.git/", "open/")
        (root / "locked").chmod(0o700)
        code = (
            "from nanoclaw.broker.mount_covers import scan_mount; "
            "from nanoclaw.broker.policy import Mount; "
            f"scan_mount(Mount({str(root)!r}, '/workspace/proj', True), ())"
        )
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        done = subprocess.run(
            [*nobody, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert done.returncode != 0, done.stdout
        assert "PermissionError" in done.stderr and "'locked'" in done.stderr, done.stderr
        assert covers(root) == {"/workspace/proj/locked/.git"}  # the control, as root
    finally:
        shutil.rmtree(root)


def test_a_mounts_own_entries_are_seen_before_a_large_subtree_uses_the_budget(
    tmp_path: Path,
) -> None:
    (tmp_path / "aaa-big").mkdir()
    for index in range(SCAN_ENTRIES):
        (tmp_path / "aaa-big" / f"f{index}").touch()
    make(tmp_path, ".git/", "zzz/.env")
    mount = Mount(str(tmp_path), "/workspace/proj", True)
    scan = scan_mount(mount, DEFAULT_BLOCKED_PATTERNS)
    assert not scan.complete
    assert "/workspace/proj/.git" in scan.covers
