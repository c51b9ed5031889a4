"""Where log records go: journald's native protocol under systemd, plain lines otherwise.

Log calls carry their context in `extra` (group, room_id, ...). In the journal each
becomes a field of its own, so `journalctl -u nanoclaw GROUP=family` finds one group's
lines; on stderr they are appended as `[group=family]`. The native protocol is a
datagram of fields to journald's socket, each `KEY=value\\n`, or for values with
newlines `KEY\\n`, a 64-bit little-endian length, the bytes and `\\n`; a record too big
for one datagram goes in a sealed memfd instead. The stdlib does all of it, so no
library is needed (python-systemd would bring a C extension and libsystemd).
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"  # tests point it at a socket of their own
IDENTIFIER = "nanoclaw"
# The `extra` keys log calls use for context, and their journal fields.
CONTEXT_FIELDS = {
    "group": "GROUP",
    "room_id": "ROOM_ID",
    "event_id": "EVENT_ID",
    "tool_unit": "TOOL_UNIT",
    "task_id": "TASK_ID",
    "duration_ms": "DURATION_MS",
    # The audit trail's (nanoclaw.host.audit): one line per tool call or unit it ran.
    "tool_call": "TOOL_CALL",
    "session_id": "SESSION_ID",
    "agent": "AGENT",
    "tool": "TOOL",
    "arguments": "TOOL_ARGUMENTS",
    "outcome": "TOOL_RESULT",
    "properties_sha256": "TOOL_UNIT_PROPERTIES_SHA256",
    "exit_status": "EXIT_STATUS",
    "signal": "EXIT_SIGNAL",
    "stdout_bytes": "STDOUT_BYTES",
    "stderr_bytes": "STDERR_BYTES",
    "truncated": "OUTPUT_TRUNCATED",
    "egress": "EGRESS",
    "reason": "REASON",
}
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def _priority(level: int) -> int:
    """The syslog priority of a logging level (journalctl -p)."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    return 6 if level >= logging.INFO else 7


def encode_fields(fields: Mapping[str, str]) -> bytes:
    parts = []
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class ContextFormatter(logging.Formatter):
    """Appends the context a log call carries in `extra`, e.g. `[group=family]`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if hasattr(record, key)
        )
        return f"{text} [{context}]" if context else text


class JournalHandler(logging.Handler):
    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path or JOURNAL_SOCKET
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        fields = {
            "MESSAGE": self.format(record),  # with the traceback, if any
            "PRIORITY": str(_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        for key, field in CONTEXT_FIELDS.items():
            if hasattr(record, key):
                fields[field] = str(getattr(record, key))
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_fields(self.fields(record))
            try:
                self.socket.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(data)
        except Exception:
            self.handleError(record)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("nanoclaw-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # journald maps only sealed memfds
            rights = array.array("i", [fd])
            self.socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.socket.close()
        super().close()


def stderr_is_journal(env: Mapping[str, str] = os.environ) -> bool:
    """Whether stderr is systemd's journal stream ($JOURNAL_STREAM is its device:inode),
    and not a redirect the service set up itself or a child that only inherited it."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def log_handler(env: Mapping[str, str] = os.environ) -> logging.Handler:
    if stderr_is_journal(env):
        return JournalHandler()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContextFormatter("%(levelname)s %(name)s: %(message)s"))
    return handler
