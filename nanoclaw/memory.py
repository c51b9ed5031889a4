"""Memory files: each group's CLAUDE.md, and the global one only the main group may write.

The group file is the CLI's project memory (it sits in the group's working directory);
the global file is put into every group's system prompt when its session starts.
Writes replace the whole file atomically, bounded in size.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_MEMORY_BYTES = 64 * 1024
GROUP_TEMPLATE = "# Memory of the group {folder}\n\nNotes worth keeping across sessions go here.\n"
GLOBAL_TEMPLATE = "# Global memory\n\nShared by every group; only the main group writes it.\n"


class MemoryRefused(Exception):
    """A write the caller may not make; the message says why."""


class Memory:
    def __init__(self, data_dir: Path) -> None:
        self.global_file = data_dir / "global" / "CLAUDE.md"
        self._groups = data_dir / "groups"

    def workdir(self, folder: str) -> Path:
        return self._groups / folder

    def group_file(self, folder: str) -> Path:
        return self.workdir(folder) / "CLAUDE.md"

    def prepare(self, folder: str) -> None:
        for path, text in (
            (self.global_file, GLOBAL_TEMPLATE),
            (self.group_file(folder), GROUP_TEMPLATE.format(folder=folder)),
        ):
            if not path.exists():
                _write_atomically(path, text)

    def read_global(self) -> str:
        return self.global_file.read_text() if self.global_file.exists() else ""

    def write(self, folder: str, is_main: bool, scope: str, content: str) -> Path:
        if scope not in ("group", "global"):
            raise MemoryRefused(f"scope must be 'group' or 'global', not {scope!r}")
        if scope == "global" and not is_main:
            raise MemoryRefused(
                "only the main group may write the global memory; it is read-only here"
            )
        size = len(content.encode())
        if size > MAX_MEMORY_BYTES:
            raise MemoryRefused(f"memory is limited to {MAX_MEMORY_BYTES} bytes, this is {size}")
        path = self.global_file if scope == "global" else self.group_file(folder)
        _write_atomically(path, content)
        return path


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
