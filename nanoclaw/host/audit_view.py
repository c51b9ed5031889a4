"""How audit rows are shown: `nanoclaw audit`'s --since and table, and /status's lines."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, tzinfo

from nanoclaw.host.audit_table import AuditRow

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SINCE_HELP = "a duration back from now (90s, 30m, 2h, 7d, 2w) or an ISO date or time"


def parse_since(text: str, now: datetime) -> int:
    """The ms timestamp `text` names: a duration before `now`, or an ISO date or time
    (without an offset: on `now`'s clock). ValueError says what is accepted."""
    if match := _DURATION.fullmatch(text.strip()):
        amount, unit = match.groups()
        return int((now - timedelta(**{_UNITS[unit]: int(amount)})).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: give {SINCE_HELP}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    return int(when.timestamp() * 1000)


def result_of(row: AuditRow) -> str:
    """The outcome in a few words: exit status, signal, or why it was refused."""
    if row.signal is not None:
        return f"{row.outcome}, signal {row.signal}"
    if row.exit_status is not None:
        return f"exit {row.exit_status}" + ("" if row.outcome == "success" else f" ({row.outcome})")
    return row.outcome


def _output(row: AuditRow) -> str:
    if row.stdout_bytes is None:
        return "-"
    return f"{row.stdout_bytes}+{row.stderr_bytes}" + (" cut" if row.truncated else "")


def _egress(row: AuditRow) -> str:
    verdicts = json.loads(row.egress) if row.egress else []
    allowed = sum(1 for v in verdicts if v.get("allow") is True)
    denied = sum(1 for v in verdicts if v.get("allow") is False)
    return f"{allowed} allowed, {denied} denied" if verdicts else "-"


def render_table(rows: Sequence[AuditRow], timezone: tzinfo) -> str:
    header = ("TIME", "GROUP", "AGENT", "TOOL", "RESULT", "UNIT", "MS", "OUTPUT", "EGRESS")
    lines = [header]
    for row in rows:
        when = datetime.fromtimestamp(row.ts / 1000, timezone)
        result = result_of(row) + (f": {row.reason}" if row.reason else "")
        lines.append(
            (f"{when:%Y-%m-%d %H:%M:%S}", row.group, row.agent, row.tool, result[:60],
             row.unit or "-", str(row.duration_ms), _output(row), _egress(row))
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    padded = ("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) for line in lines)
    return "\n".join(f"{start}  {line[-1]}" for start, line in zip(padded, lines, strict=True))


def status_lines(rows: Sequence[AuditRow], timezone: tzinfo) -> list[str]:
    """/status's last tool calls of a group, newest first."""
    if not rows:
        return ["- recent tool calls: none"]
    lines = ["- recent tool calls:"]
    for row in reversed(rows):
        when = datetime.fromtimestamp(row.ts / 1000, timezone)
        unit = f", `{row.unit}`" if row.unit else ""
        lines.append(f"  - `{row.tool}` at {when:%H:%M:%S}: {result_of(row)}{unit}")
    return lines
