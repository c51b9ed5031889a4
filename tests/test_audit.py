"""The audit trail without a sandbox: how calls become rows, what is kept of their
arguments, retention, and `nanoclaw audit` on a database the host has open."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import tool

from nanoclaw import cli
from nanoclaw.broker.protocol import RunResult
from nanoclaw.host import audit_call
from nanoclaw.host.audit import DAY_MS, Audit
from nanoclaw.host.audit_args import MAX_ARGUMENT_BYTES, SecretFilter
from nanoclaw.host.audit_call import AuditScope
from nanoclaw.host.audit_table import AuditRow
from nanoclaw.host.audit_view import parse_since
from nanoclaw.host.egress_proxy import Decision
from nanoclaw.host.host_tools import refusal_result, tool_result
from nanoclaw.host.journal import JournalHandler
from nanoclaw.host.records import now_ms
from nanoclaw.host.store import Store
from nanoclaw.host.swarm import CALLER

MATRIX_TOKEN = "syt_bm9ib2R5_matrix-token-of-the-bot"
UNIT = "nanoclaw-tool-family-0123456789abcdef.service"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "nanoclaw.db")


def result(**changes: Any) -> RunResult:
    values: dict[str, Any] = {
        "unit": UNIT, "result": "success", "exit_status": 0, "signal": None,
        "stdout": b"hello\n", "stderr": b"", "truncated": False, "duration_ms": 12,
        "timeout": 60, "properties_sha256": "ab" * 32,
    }  # fmt: skip
    return RunResult(**{**values, **changes})


async def call(store: Store, name: str, args: dict[str, Any], body: Any) -> dict[str, Any]:
    """One call of a tool `name` whose handler is `body`, through the audit wrapper."""
    made = tool(name, "a tool", {})(body)
    scope = AuditScope("family", session_id="session-1")
    (wrapped,) = Audit(store, SecretFilter([MATRIX_TOKEN]), 90).wrap([made], scope)
    answer: dict[str, Any] = await wrapped.handler(args)
    return answer


async def test_a_call_that_runs_a_unit_is_a_row_with_the_units_outcome(store: Store) -> None:
    verdicts = [
        Decision(True, "CONNECT", "example.org", 443),
        Decision(False, "GET", "x.org", 80, "no"),
    ]

    async def bash(args: dict[str, Any]) -> dict[str, Any]:
        audit_call.unit_ran(result(truncated=True, exit_status=3, result="exit-code"), verdicts)
        return tool_result("out", error=True)

    await call(store, "bash", {"command": "make test"}, bash)
    (row,) = store.audit_rows()
    assert (row.group, row.agent, row.session_id, row.tool) == (
        "family",
        "main",
        "session-1",
        "bash",
    )
    assert json.loads(row.arguments) == {"command": "make test"}
    assert (row.unit, row.properties_sha256, row.outcome) == (UNIT, "ab" * 32, "exit-code")
    assert (row.exit_status, row.signal, row.duration_ms) == (3, None, 12)
    assert (row.stdout_bytes, row.stderr_bytes, row.truncated) == (6, 0, True)
    assert json.loads(row.egress or "") == [v.to_json() for v in verdicts]
    assert row.reason is None


async def test_host_tools_and_refusals_are_rows_without_a_unit(store: Store) -> None:
    async def send(args: dict[str, Any]) -> dict[str, Any]:
        return tool_result("sent")

    async def refused(args: dict[str, Any]) -> dict[str, Any]:
        return refusal_result("only the main group may send to another group's room")

    async def broken(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the homeserver went away")

    await call(store, "send_message", {"text": "hi"}, send)
    await call(store, "send_message", {"text": "hi", "target_group": "work"}, refused)
    with pytest.raises(RuntimeError):
        await call(store, "send_message", {"text": "hi"}, broken)
    rows = store.audit_rows("family")
    assert [(r.outcome, r.unit, r.reason) for r in rows] == [
        ("ok", None, None),
        ("refused", None, "only the main group may send to another group's room"),
        ("error", None, "RuntimeError: the homeserver went away"),
    ]
    assert len({r.call_id for r in rows}) == 3


async def test_a_call_refused_after_its_unit_keeps_both(store: Store) -> None:
    async def edit(args: dict[str, Any]) -> dict[str, Any]:
        audit_call.unit_ran(result(), [])
        return refusal_result("edit refused: old_string does not occur in the file")

    await call(store, "edit", {"path": "a.md", "old_string": "x", "new_string": "y"}, edit)
    unit, refusal = store.audit_rows()
    assert (unit.unit, unit.outcome, refusal.outcome, refusal.unit) == (
        UNIT,
        "success",
        "refused",
        None,
    )
    assert unit.call_id == refusal.call_id


async def test_a_secret_in_the_arguments_reaches_neither_the_table_nor_the_journal(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.audit")

    async def bash(args: dict[str, Any]) -> dict[str, Any]:
        return refusal_result(f"bash refused: cannot run {args['command']}")

    command = (
        f"API_TOKEN=hunter2-not-shown curl -H 'Authorization: Bearer abcdefgh12345' "
        f"https://alice:pa55word@example.org/q?x={MATRIX_TOKEN} --data visible-control"
    )
    await call(store, "bash", {"command": command, "password": "topsecret1"}, bash)
    database = [tuple(r) for r in store._db.execute("SELECT * FROM audit")]
    journal = [JournalHandler().fields(record) for record in caplog.records]
    for where in (repr(database), repr(journal)):
        for secret in (
            "hunter2-not-shown",
            "abcdefgh12345",
            "pa55word",
            MATRIX_TOKEN,
            "topsecret1",
        ):
            assert secret not in where
        # The control: the rest of the same argument is recorded as given.
        assert "curl -H" in where and "https://alice:" in where and "visible-control" in where
    (row,) = store.audit_rows()
    assert json.loads(row.arguments)["password"] == "[secret]"
    (fields,) = journal
    assert fields["TOOL"] == "bash" and fields["TOOL_RESULT"] == "refused"
    assert json.loads(fields["TOOL_ARGUMENTS"]) == json.loads(row.arguments)


def test_file_and_message_payloads_are_kept_as_size_and_digest_and_all_is_bounded() -> None:
    kept = json.loads(SecretFilter().arguments({"path": "a", "content": "secret=\nx"}))
    assert kept == {"path": "a", "content": {"bytes": 9, "sha256": kept["content"]["sha256"]}}
    long = SecretFilter().arguments({"command": "echo " + "x" * 10_000, "n": 1})
    assert len(long.encode()) <= MAX_ARGUMENT_BYTES and json.loads(long)["n"] == 1
    assert json.loads(long)["command"].startswith("echo xxx")
    many = SecretFilter().arguments({f"k{i}": "v" * 40 for i in range(500)})
    assert len(many.encode()) <= MAX_ARGUMENT_BYTES + 40 and "cut" in json.loads(many)


def test_retention_prunes_by_time(store: Store, tmp_path: Path) -> None:
    old, new = now_ms() - 91 * DAY_MS, now_ms() - 89 * DAY_MS
    audit_log = Audit(store, SecretFilter(), 90)
    for ts in (old, new):
        store.record_audit([AuditRow("c", ts, "family", None, "main", "bash", "{}", "ok", 1)])
    audit_log.prune()
    assert [r.ts for r in store.audit_rows()] == [new]


def test_since_takes_durations_and_iso_times() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ms = int(now.timestamp() * 1000)
    assert parse_since("2h", now) == ms - 2 * 3_600_000
    assert parse_since("7d", now) == ms - 7 * DAY_MS
    assert parse_since("90s", now) == ms - 90_000
    assert parse_since("2026-03-01", now) == ms - 12 * 3_600_000
    assert parse_since("2026-03-01T11:00+01:00", now) == ms - 2 * 3_600_000
    with pytest.raises(ValueError, match="a duration back from now"):
        parse_since("yesterday", now)


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "data_dir": str(tmp_path), "timezone": "UTC",
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "access_token_file": str(tmp_path / "token"), "owners": ["@me:example.org"]},
    }))  # fmt: skip
    return config


def test_nanoclaw_audit_reads_beside_the_host_and_filters(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    rows = [
        AuditRow("a", now_ms() - 3 * DAY_MS, "family", "s", "main", "bash", "{}",
                       "success", 5, unit=UNIT, exit_status=0, stdout_bytes=3, stderr_bytes=0,
                       truncated=False),
        AuditRow("b", now_ms() - 1000, "family", "s", "main", "send_message", "{}", "ok", 1),
        AuditRow("c", now_ms() - 1000, "work", "t", "main", "fetch", "{}", "refused", 1,
                       reason="no"),
    ]  # fmt: skip
    store.record_audit(rows)  # the host's connection stays open, as when it runs
    assert cli.main(["audit", "--config", str(config), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["call_id"] for line in lines] == ["a", "b", "c"]
    assert lines[0]["unit"] == UNIT and lines[0]["arguments"] == {} and lines[0]["egress"] == []
    assert cli.main(["audit", "family", "--since", "1d", "--config", str(config), "--json"]) == 0
    assert [json.loads(x)["call_id"] for x in capsys.readouterr().out.splitlines()] == ["b"]
    assert cli.main(["audit", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "TIME",
        "GROUP",
        "AGENT",
        "TOOL",
        "RESULT",
        "UNIT",
        "MS",
        "OUTPUT",
        "EGRESS",
    ]
    assert UNIT in table[1] and "exit 0" in table[1] and "refused: no" in table[3]
    assert cli.main(["audit", "--since", "soon", "--config", str(config)]) == 2
    assert "--since 'soon'" in capsys.readouterr().err
    # Read-only: the command changed nothing, and the host still writes.
    store.record_audit(rows[:1])
    assert len(store.audit_rows()) == 4


async def test_a_subagents_call_is_recorded_as_its_own(store: Store) -> None:
    async def bash(args: dict[str, Any]) -> dict[str, Any]:
        return tool_result("out")

    await call(store, "bash", {"command": "ls"}, bash)  # the control: the group's own agent
    token = CALLER.set("counter")  # as nanoclaw.host.swarm sets it for a subagent's call
    try:
        await call(store, "bash", {"command": "ls"}, bash)
    finally:
        CALLER.reset(token)
    assert [row.agent for row in store.audit_rows()] == ["main", "counter"]
