"""Memory: each group's notes and the notes all groups share, in files only the host writes.

They live under DATA/memory, which no tool unit can write: a group's memory in
memory/groups/<folder>.md (no unit sees it), the global memory in memory/global/CLAUDE.md
(bound read-only at /workspace/global in every unit). The host reads them itself, into
the system prompt of each new session; the CLI loads no memory file of its own. A read
opens the file without following a symlink and keeps at most MAX_MEMORY_BYTES; a write
(write_memory) puts the text into a new file with a random name, created exclusively and
without following links, then renames it over the old one. Earlier versions kept the
group's memory in its workspace, where its tools could replace it with a symlink or
plant links under the temporary file's name; nothing is read from there any more.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from nanoclaw.broker.policy import GLOBAL_MEMORY

log = logging.getLogger(__name__)

MAX_MEMORY_BYTES = 64 * 1024
GROUP_TEMPLATE = "# Memory of the group {folder}\n\nNotes worth keeping across sessions go here.\n"
GLOBAL_TEMPLATE = "# Global memory\n\nShared by every group; only the main group writes it.\n"
GLOBAL_FILE = "CLAUDE.md"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class MemoryRefused(Exception):
    """A write the caller may not make; the message says why."""


class Memory:
    def __init__(self, data_dir: Path) -> None:
        # Tool units read the global directory through their bind, as "other": 0755/0644.
        self.global_dir = data_dir / GLOBAL_MEMORY
        self._groups = data_dir / "memory" / "groups"

    def group_file(self, folder: str) -> Path:
        return self._groups / f"{folder}.md"

    @property
    def global_file(self) -> Path:
        return self.global_dir / GLOBAL_FILE

    def prepare(self, folder: str) -> None:
        self.global_dir.mkdir(parents=True, exist_ok=True)
        self.global_dir.chmod(0o755)  # whatever the service's UMask=
        self._groups.mkdir(mode=0o700, exist_ok=True)
        for path, text in (
            (self.global_file, GLOBAL_TEMPLATE),
            (self.group_file(folder), GROUP_TEMPLATE.format(folder=folder)),
        ):
            if not os.path.lexists(path):
                _write_atomically(path, text)

    def read(self, folder: str) -> str:
        return _read_bounded(self.group_file(folder))

    def read_global(self) -> str:
        return _read_bounded(self.global_file)

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


def _read_bounded(path: Path) -> str:
    """The file's text, at most MAX_MEMORY_BYTES of it; "" if it is missing or a link."""
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        return ""
    except OSError as error:  # ELOOP: a symlink, which nothing of ours ever makes
        log.warning("memory %s not read: %s", path, error.strerror)
        return ""
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_MEMORY_BYTES)
    return data.decode(errors="replace")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, _CREATE, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the service's UMask=
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
