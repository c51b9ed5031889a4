"""Logging to journald's native protocol, read back from a socket standing in for journald's."""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw.host import journal
from nanoclaw.host.journal import ContextFormatter, JournalHandler, log_handler, stderr_is_journal


def parse(datagram: bytes) -> dict[str, str]:
    """The fields of one native-protocol datagram, as journald reads them."""
    fields: dict[str, str] = {}
    while datagram:
        line, _, rest = datagram.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            datagram = rest
        else:  # KEY\n, a little-endian 64-bit length, the value, \n
            key, (size,) = line, struct.unpack("<Q", rest[:8])
            value, datagram = rest[8 : 8 + size], rest[8 + size :]
            assert datagram[:1] == b"\n"
            datagram = datagram[1:]
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "journal.socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(path))
    yield server
    server.close()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("nanoclaw.test-journal")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = JournalHandler()
    log.addHandler(handler)
    yield log
    log.removeHandler(handler)
    handler.close()


def receive(server: socket.socket) -> dict[str, str]:
    data, ancillary, _, _ = server.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    if ancillary:  # too big for a datagram: a sealed memfd
        fds = array.array("i")
        fds.frombytes(ancillary[0][2])
        with os.fdopen(fds[0], "rb") as memfd:
            seals = fcntl.fcntl(memfd.fileno(), fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE, "journald maps only sealed memfds"
            data = os.pread(memfd.fileno(), os.fstat(memfd.fileno()).st_size, 0)
    return parse(data)


def test_context_becomes_fields_of_their_own(
    journald: socket.socket, logger: logging.Logger
) -> None:
    logger.info(
        "agent run done in %.2f s",
        1.5,
        extra={
            "group": "family",
            "room_id": "!r:example.org",
            "event_id": "$e",
            "tool_unit": "nanoclaw-tool-family-1.service",
            "task_id": "7",
            "duration_ms": 1500,
        },
    )
    fields = receive(journald)
    assert fields["MESSAGE"] == "agent run done in 1.50 s"
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "nanoclaw"
    assert fields["LOGGER"] == "nanoclaw.test-journal"
    assert fields["CODE_FUNC"] == "test_context_becomes_fields_of_their_own"
    assert {k: v for k, v in fields.items() if k in journal.CONTEXT_FIELDS.values()} == {
        "GROUP": "family",
        "ROOM_ID": "!r:example.org",
        "EVENT_ID": "$e",
        "TOOL_UNIT": "nanoclaw-tool-family-1.service",
        "TASK_ID": "7",
        "DURATION_MS": "1500",
    }
    logger.warning("no context here")
    fields = receive(journald)
    assert fields["PRIORITY"] == "4" and "GROUP" not in fields


def test_levels_map_to_syslog_priorities(journald: socket.socket, logger: logging.Logger) -> None:
    for level, priority in ((logging.DEBUG, "7"), (logging.ERROR, "3"), (logging.CRITICAL, "2")):
        logger.log(level, "x")
        assert receive(journald)["PRIORITY"] == priority


def test_a_traceback_keeps_its_newlines(journald: socket.socket, logger: logging.Logger) -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        logger.exception("it failed", extra={"group": "family"})
    fields = receive(journald)
    assert fields["MESSAGE"].startswith("it failed\nTraceback (most recent call last):")
    assert fields["MESSAGE"].endswith("ValueError: broken")
    assert fields["GROUP"] == "family"


def test_a_record_too_big_for_a_datagram_goes_in_a_memfd(
    journald: socket.socket, logger: logging.Logger
) -> None:
    big = "x" * (4 << 20)
    logger.info(big, extra={"group": "family"})
    fields = receive(journald)
    assert fields["GROUP"] == "family"
    message = fields["MESSAGE"]
    assert len(message) == len(big) and set(message) == {"x"}  # no 4 MiB diff on failure


def test_the_journal_only_when_stderr_is_the_journal_stream(
    journald: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = os.fstat(sys.stderr.fileno())
    ours = f"{stat.st_dev}:{stat.st_ino}"
    assert stderr_is_journal({"JOURNAL_STREAM": ours})
    assert isinstance(log_handler({"JOURNAL_STREAM": ours}), JournalHandler)
    # Inherited by a process whose stderr was redirected: not ours.
    for value in (f"{stat.st_dev}:{stat.st_ino + 1}", "", "garbage"):
        assert not stderr_is_journal({"JOURNAL_STREAM": value})
    plain = log_handler({})
    assert not isinstance(plain, JournalHandler)
    assert isinstance(plain.formatter, ContextFormatter)


def test_plain_lines_carry_the_context_at_the_end() -> None:
    record = logging.LogRecord("nanoclaw.host.router", logging.INFO, "f", 1, "run done", (), None)
    record.group, record.duration_ms = "family", 12
    text = ContextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert text == "INFO nanoclaw.host.router: run done [group=family duration_ms=12]"
