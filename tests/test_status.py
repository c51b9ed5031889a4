"""/status, rendered from what the router gathered."""

from __future__ import annotations

from dataclasses import replace
from zoneinfo import ZoneInfo

from nanoclaw.broker.protocol import Usage, UsageReport
from nanoclaw.host.audit_table import AuditRow
from nanoclaw.host.records import GroupRow
from nanoclaw.host.status import GroupStatus, render_status

ROW = GroupRow("family", "!r:x", {}, "config", 3, "abc-123", 1_700_000_000_000, "ok")


def status(**changes: object) -> str:
    values: dict[str, object] = {
        "folder": "family",
        "row": ROW,
        "running": ["main"],
        "waiting": [],
        "slots": 5,
        "warm": True,
        "agent_unit": None,
        "waiting_for_keys": (0, None),
        "task_statuses": ["active", "paused", "active", "done"],
        "workspace": None,
        "timezone": ZoneInfo("UTC"),
    }
    return render_status(GroupStatus(**{**values, **changes}))  # type: ignore[arg-type]


def test_a_group_with_a_session_runs_and_tasks() -> None:
    assert status().splitlines() == [
        "**Group** `family`",
        "- runs: 1 of 5 slots busy (main)",
        "- waiting: none",
        "- session: `abc-123` (warm)",
        "- last run: 2023-11-14 22:13:20 UTC, ok",
        "- tasks: 2 active, 1 paused",
        "- recent tool calls: none",
    ]


def test_a_new_group_has_no_session_and_has_never_run() -> None:
    shown = status(row=None, running=[], waiting=["family"], warm=False)
    assert "- session: `none` (cold)" in shown and "- last run: never" in shown
    assert "- runs: 0 of 5 slots busy\n" in shown and "- waiting: family" in shown


def test_the_workspace_line_says_what_it_holds_or_why_it_cannot() -> None:
    report = UsageReport(5 * 1024**3, {"family": Usage(3 * 1024**2, False)})
    assert "- workspace: at least 3.0 MiB; 5.0 GiB free, shared by all groups\n" in status(
        workspace=report
    )
    assert "- workspace: not in the sandbox policy; 0 bytes free, shared by all groups\n" in status(
        workspace=UsageReport(0, {})
    )
    assert "- workspace: unknown (cannot reach the broker)\n" in status(
        workspace="cannot reach the broker"
    )


def test_a_warm_confined_session_names_its_agent_unit() -> None:
    shown = status(agent_unit="nanoclaw-agent-family-0123456789abcdef.service")
    assert (
        "- session: `abc-123` (warm), its agent in "
        "`nanoclaw-agent-family-0123456789abcdef.service`" in shown
    )


def test_encrypted_messages_waiting_for_their_keys_are_shown_only_when_there_are_some() -> None:
    assert "waiting for their keys" not in status()
    shown = status(waiting_for_keys=(2, 1_700_000_000_000))
    assert (
        "- waiting for their keys: 2 encrypted message(s), the oldest since 2023-11-14 22:13 UTC"
        in shown
    )


def test_the_last_tool_calls_are_shown_newest_first() -> None:
    def row(tool: str, ts: int, **unit: object) -> AuditRow:
        made = AuditRow("c", ts, "family", "s", "main", tool, "{}", "ok", 5)
        return replace(made, **unit)  # type: ignore[arg-type]

    calls = [
        row("send_message", 1_700_000_000_000),
        row("bash", 1_700_000_001_000, outcome="exit-code", unit="nanoclaw-tool-family-1.service",
            exit_status=2),
        row("fetch", 1_700_000_002_000, outcome="refused", reason="no"),
    ]  # fmt: skip
    assert status(recent_calls=calls).splitlines()[-4:] == [
        "- recent tool calls:",
        "  - `fetch` at 22:13:22: refused",
        "  - `bash` at 22:13:21: exit 2 (exit-code), `nanoclaw-tool-family-1.service`",
        "  - `send_message` at 22:13:20: ok",
    ]
