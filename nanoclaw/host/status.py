"""What /status shows of a group, rendered from what the router gathers: its share of the
run slots, the queue, its session, its last run, its tasks, its workspace and its last
tool calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from nanoclaw.broker.protocol import UsageReport
from nanoclaw.broker.workspace_usage import shown, size
from nanoclaw.host.audit_table import AuditRow
from nanoclaw.host.audit_view import status_lines
from nanoclaw.host.records import GroupRow


@dataclass(frozen=True)
class GroupStatus:
    folder: str
    row: GroupRow | None
    running: Sequence[str]  # groups in a run now
    waiting: Sequence[str]  # groups waiting for a slot
    slots: int
    warm: bool
    agent_unit: str | None  # where the warm CLI runs, when in a unit of its own
    task_statuses: Sequence[str]
    # Encrypted messages in the room that wait for their keys: how many, the oldest's arrival
    waiting_for_keys: tuple[int, int | None]
    # The broker's measure, or why there is none; None where no broker is configured.
    workspace: UsageReport | str | None
    timezone: tzinfo
    recent_calls: Sequence[AuditRow] = ()  # the audit trail's last rows, oldest first


def render_status(status: GroupStatus) -> str:
    row = status.row
    session = "none" if row is None or row.session_id is None else row.session_id
    last = "never"
    if row is not None and row.last_run_ts is not None:
        when = datetime.fromtimestamp(row.last_run_ts / 1000, status.timezone)
        last = f"{when:%Y-%m-%d %H:%M:%S %Z}, {row.last_run_status}"
    tasks = status.task_statuses
    lines = [
        f"**Group** `{status.folder}`",
        f"- runs: {len(status.running)} of {status.slots} slots busy"
        + (f" ({', '.join(status.running)})" if status.running else ""),
        f"- waiting: {', '.join(status.waiting) if status.waiting else 'none'}",
        f"- session: `{session}` ({'warm' if status.warm else 'cold'})"
        + (f", its agent in `{status.agent_unit}`" if status.agent_unit else ""),
        f"- last run: {last}",
        f"- tasks: {tasks.count('active')} active, {tasks.count('paused')} paused",
    ]
    count, oldest = status.waiting_for_keys
    if count and oldest is not None:
        since = datetime.fromtimestamp(oldest / 1000, status.timezone)
        lines.append(
            f"- waiting for their keys: {count} encrypted message(s), the oldest since "
            f"{since:%Y-%m-%d %H:%M %Z}"
        )
    if isinstance(status.workspace, str):
        lines.append(f"- workspace: unknown ({status.workspace})")
    elif status.workspace is not None:
        usage = status.workspace.groups.get(status.folder)
        held = "not in the sandbox policy" if usage is None else shown(usage)
        # No per-group bound: all workspaces share one file system (broker.workspace_usage).
        free = size(status.workspace.free_bytes)
        lines.append(f"- workspace: {held}; {free} free, shared by all groups")
    lines += status_lines(status.recent_calls, status.timezone)
    return "\n".join(lines)
