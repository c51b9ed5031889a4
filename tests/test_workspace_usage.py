"""Measuring a workspace: what it holds, never what its links lead to, within a bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw.broker import workspace_usage
from nanoclaw.broker.protocol import Usage
from nanoclaw.broker.workspace_usage import measure, shown, size


def test_a_workspace_is_measured_by_its_blocks_and_its_links_are_not_followed(
    tmp_path: Path,
) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data").write_bytes(b"x" * 1024 * 1024)
    workspace = tmp_path / "workspace"
    (workspace / "sub").mkdir(parents=True)
    (workspace / "sub" / "notes").write_bytes(b"x" * 4096)
    (workspace / "to-big").symlink_to(tmp_path / "big")
    usage = measure(str(workspace))
    assert usage.complete
    # The file and the directory holding it; the link's target is never counted.
    assert 4096 <= usage.bytes < 1024 * 1024, usage
    assert measure(str(tmp_path / "big")).bytes >= 1024 * 1024  # the control


def test_the_walk_is_bounded_and_says_at_least(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(20):
        (tmp_path / f"f{index}").write_bytes(b"x")
    monkeypatch.setattr(workspace_usage, "MAX_ENTRIES", 10)
    usage = measure(str(tmp_path))
    assert not usage.complete
    assert shown(usage).startswith("at least ")


def test_a_missing_workspace_holds_nothing(tmp_path: Path) -> None:
    assert measure(str(tmp_path / "missing")) == Usage(0, True)


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_sizes_read_as_people_write_them(count: int, text: str) -> None:
    assert size(count) == text
