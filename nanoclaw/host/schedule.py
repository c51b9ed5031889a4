"""Slot arithmetic for scheduled tasks: pure functions from a schedule and a time to slots.

Three kinds: `cron` (five-field expression on the configured zone's wall clock), `interval`
(a fixed period anchored to the previous slot, so runs never drift) and `once` (one ISO
time, with an offset or on the local wall clock). Times are aware datetimes throughout.

Cron and daylight saving time: every matching wall-clock time runs once, so a 02:30 job
runs once on the day the clock repeats 02:00-03:00, and on the day the clock skips that
hour it runs at the instant 02:30 "would have been" (03:30 summer time), as PEP 495 maps
a skipped time.

Slots are returned in UTC: aware datetimes that share a zone compare and add on the wall
clock (ignoring `fold`), which is wrong around those very transitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter

Kind = Literal["cron", "interval", "once"]
KINDS: tuple[Kind, ...] = ("cron", "interval", "once")

_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_INTERVAL = timedelta(days=366)


class ScheduleError(ValueError):
    """A schedule that cannot be parsed; the message says what a valid one looks like."""


@dataclass(frozen=True)
class Schedule:
    kind: Kind
    value: str  # as written: the cron expression, the duration, or the ISO time

    def describe(self) -> str:
        return (
            {"cron": "cron", "interval": "every", "once": "once at"}[self.kind] + " " + self.value
        )


def parse_schedule(kind: str, value: str, tz: ZoneInfo) -> Schedule:
    """Validate a schedule; raises ScheduleError naming what is wrong."""
    if kind not in KINDS:
        raise ScheduleError(f"unknown schedule type {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "cron":
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ScheduleError(
                f"{value!r} is not a cron expression of five fields "
                "(minute hour day-of-month month day-of-week), like '0 8 * * mon-fri'"
            )
    elif kind == "interval":
        interval(value)
    else:
        once_time(value, tz)
    return Schedule(kind, value.strip())


def interval(value: str) -> timedelta:
    """'90', '90s', '15m', '1h', '2d' as a period of at least one second."""
    match = _DURATION.fullmatch(value.strip())
    period = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]]) if match else None
    if period is None or not timedelta(seconds=1) <= period <= MAX_INTERVAL:
        raise ScheduleError(
            f"{value!r} is not an interval: give seconds, or a number with s, m, h or d "
            "(like '15m'), from 1 s to 366 d"
        )
    return period


def once_time(value: str, tz: ZoneInfo) -> datetime:
    """An ISO time; without an offset it is read on the configured zone's wall clock."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ScheduleError(
            f"{value!r} is not an ISO time like 2026-05-01T09:00 or 2026-05-01T09:00+02:00"
        ) from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=tz)).astimezone(UTC)


def first_slot(schedule: Schedule, now: datetime, tz: ZoneInfo) -> datetime | None:
    """The first slot of a task created (or resumed) at `now`: never earlier than now,
    except a `once` time that has passed, which is due at once."""
    if schedule.kind == "once":
        return once_time(schedule.value, tz)
    if schedule.kind == "interval":
        return now.astimezone(UTC) + interval(schedule.value)
    return _next_cron(schedule.value, now, tz)


def due_slot(
    schedule: Schedule, next_due: datetime, now: datetime, tz: ZoneInfo
) -> tuple[datetime, datetime | None]:
    """The slot to run now and the slot after it, given the stored `next_due` <= now.

    Slots missed while the host was down are skipped, not replayed: the run is for the
    latest slot not after `now`, and the next one is the first after `now`.
    """
    next_due = next_due.astimezone(UTC)
    if schedule.kind == "once":
        return next_due, None
    if schedule.kind == "interval":
        period = interval(schedule.value)
        slot = next_due + ((now - next_due) // period) * period
        return slot, slot + period
    slot = next_due
    following = _next_cron(schedule.value, slot, tz)
    while following <= now:
        slot, following = following, _next_cron(schedule.value, following, tz)
    return slot, following


def _next_cron(expression: str, after: datetime, tz: ZoneInfo) -> datetime:
    """The first matching wall-clock time strictly after `after` (see the module's DST note)."""
    # croniter walks naive wall-clock times; mapping each to an instant with fold=0 makes a
    # repeated hour's times match once and a skipped hour's times land just after the jump.
    walk = croniter(expression, after.astimezone(tz).replace(tzinfo=None, fold=0))
    while True:
        wall_clock: datetime = walk.get_next(datetime)
        candidate = wall_clock.replace(tzinfo=tz).astimezone(UTC)
        if candidate > after:
            return candidate
