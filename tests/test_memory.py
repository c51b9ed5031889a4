"""Memory files: only the host writes them, and neither a read nor a write follows a link.

The attacks are those of the first red-team pass, when memory lived in the group's
workspace: a CLAUDE.md replaced by a symlink to a secret, and symlinks planted under the
temporary file's name so that write_memory wrote elsewhere. Each next to a control that
shows the same link does lead somewhere when followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nanoclaw.host.memory import (
    GLOBAL_TEMPLATE,
    GROUP_TEMPLATE,
    MAX_MEMORY_BYTES,
    Memory,
    MemoryRefused,
)


@pytest.fixture
def memory(tmp_path: Path) -> Memory:
    memory = Memory(tmp_path / "data")
    memory.prepare("family")
    return memory


def test_prepare_writes_the_templates_where_no_unit_can_write(memory: Memory) -> None:
    assert memory.read("family") == GROUP_TEMPLATE.format(folder="family")
    assert memory.read_global() == GLOBAL_TEMPLATE
    # Units read the global directory through a read-only bind, as "other".
    assert stat.S_IMODE(memory.global_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE(memory.global_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(memory.group_file("family").parent.stat().st_mode) == 0o700


def test_prepare_keeps_what_is_there(memory: Memory) -> None:
    memory.write("family", False, "group", "kept")
    memory.prepare("family")
    assert memory.read("family") == "kept"


def test_a_write_replaces_the_whole_file_and_leaves_no_temporary(memory: Memory) -> None:
    path = memory.write("family", False, "group", "first")
    memory.write("family", False, "group", "second")
    assert path == memory.group_file("family") and memory.read("family") == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["family.md"]


def test_only_the_main_group_writes_the_global_memory(memory: Memory) -> None:
    with pytest.raises(MemoryRefused, match="only the main group"):
        memory.write("family", False, "global", "x")
    memory.write("main", True, "global", "shared")
    assert memory.read_global() == "shared"


def test_writes_and_reads_are_bounded(memory: Memory) -> None:
    with pytest.raises(MemoryRefused, match=f"limited to {MAX_MEMORY_BYTES} bytes"):
        memory.write("family", False, "group", "x" * (MAX_MEMORY_BYTES + 1))
    memory.group_file("family").write_text("y" * (MAX_MEMORY_BYTES * 4))  # not by the host
    assert memory.read("family") == "y" * MAX_MEMORY_BYTES


def test_a_memory_file_replaced_by_a_symlink_is_not_read(
    memory: Memory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "matrix-token"
    secret.write_text("syt_secret_token")
    memory.group_file("family").unlink()
    memory.group_file("family").symlink_to(secret)
    # The control: following the link, as the CLI did with CLAUDE.md, reads the token.
    assert memory.group_file("family").read_text() == "syt_secret_token"
    assert memory.read("family") == ""
    assert "not read" in caplog.text


def test_a_write_replaces_a_planted_symlink_instead_of_writing_through_it(
    memory: Memory, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    group_file = memory.group_file("family")
    group_file.unlink()
    group_file.symlink_to(victim)
    # Links under every temporary name the old code would have used, too.
    for pid in range(os.getpid() - 5, os.getpid() + 5):
        group_file.with_name(f".{group_file.name}.{pid}.tmp").symlink_to(victim)
    # The control: an ordinary write to the planted name goes through to the victim.
    probe = group_file.with_name(f".{group_file.name}.{os.getpid()}.tmp")
    probe.write_text("through the link")
    assert victim.read_text() == "through the link"
    victim.write_text("untouched")

    memory.write("family", False, "group", "fact")
    assert victim.read_text() == "untouched"
    assert not group_file.is_symlink() and memory.read("family") == "fact"
