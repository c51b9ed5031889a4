"""Slot arithmetic: cron across DST transitions, interval anchoring, once times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from nanoclaw.host.schedule import Schedule, ScheduleError, due_slot, first_slot, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def cron_slots(expression: str, start: datetime, count: int) -> list[datetime]:
    """Successive slots, each computed as the scheduler does after running the previous."""
    schedule = parse_schedule("cron", expression, BERLIN)
    slot = first_slot(schedule, start, BERLIN)
    slots = []
    while len(slots) < count:
        assert slot is not None
        slots.append(slot)
        _, slot = due_slot(schedule, slot, slot, BERLIN)
    return slots


def local(slots: list[datetime]) -> list[str]:
    return [s.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for s in slots]


def test_cron_is_on_the_local_wall_clock() -> None:
    slots = cron_slots("0 8 * * *", berlin(2026, 3, 27, 9, 0), 3)
    assert local(slots) == ["03-28 08:00 CET", "03-29 08:00 CEST", "03-30 08:00 CEST"]
    assert slots[1] - slots[0] == timedelta(hours=23), "the short day is an hour shorter"


def test_cron_in_the_skipped_hour_runs_once_just_after_the_jump() -> None:
    slots = cron_slots("30 2 * * *", berlin(2026, 3, 28, 12, 0), 3)
    assert local(slots) == ["03-29 03:30 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]


def test_cron_in_the_repeated_hour_runs_once() -> None:
    slots = cron_slots("30 2 * * *", berlin(2026, 10, 24, 12, 0), 3)
    assert local(slots) == ["10-25 02:30 CEST", "10-26 02:30 CET", "10-27 02:30 CET"]


def test_cron_every_half_hour_through_both_transitions_never_goes_back() -> None:
    spring = cron_slots("*/30 * * * *", berlin(2026, 3, 29, 1, 0), 4)
    assert local(spring) == [
        "03-29 01:30 CET",
        "03-29 03:00 CEST",
        "03-29 03:30 CEST",
        "03-29 04:00 CEST",
    ]
    autumn = cron_slots("*/30 * * * *", berlin(2026, 10, 25, 1, 45), 4)
    assert local(autumn) == [
        "10-25 02:00 CEST",
        "10-25 02:30 CEST",
        "10-25 03:00 CET",
        "10-25 03:30 CET",
    ]
    for slots in (spring, autumn):
        assert all(a < b for a, b in pairwise(slots))


def test_cron_starting_inside_the_repeated_hour_does_not_repeat_a_time() -> None:
    schedule = parse_schedule("cron", "30 2 * * *", BERLIN)
    second_pass = berlin(2026, 10, 25, 2, 15, fold=1)  # CET, after 02:30 CEST has run
    slot = first_slot(schedule, second_pass, BERLIN)
    assert slot is not None and local([slot]) == ["10-26 02:30 CET"]


def test_interval_is_anchored_to_the_previous_slot_and_skips_missed_slots() -> None:
    schedule = parse_schedule("interval", "15m", BERLIN)
    created = datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)
    first = first_slot(schedule, created, BERLIN)
    assert first == datetime(2026, 1, 1, 12, 15, 7, tzinfo=UTC)
    # Ran late (12:15:50): the next slot stays on the grid, no drift.
    assert due_slot(schedule, first, first + timedelta(seconds=43), BERLIN) == (
        first,
        datetime(2026, 1, 1, 12, 30, 7, tzinfo=UTC),
    )
    # Down from 12:20 to 13:20: one run for the latest missed slot, the rest skipped.
    slot, following = due_slot(schedule, first, datetime(2026, 1, 1, 13, 20, tzinfo=UTC), BERLIN)
    assert (slot, following) == (
        datetime(2026, 1, 1, 13, 15, 7, tzinfo=UTC),
        datetime(2026, 1, 1, 13, 30, 7, tzinfo=UTC),
    )


def test_interval_counts_elapsed_time_across_dst() -> None:
    schedule = parse_schedule("interval", "1h", BERLIN)
    before = berlin(2026, 3, 29, 1, 30)
    after = first_slot(schedule, before, BERLIN)
    assert after is not None and local([after]) == ["03-29 03:30 CEST"]


def test_interval_spellings() -> None:
    for value, seconds in (("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400)):
        slot = first_slot(Schedule("interval", value), datetime(2026, 1, 1, tzinfo=UTC), BERLIN)
        assert slot == datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def test_once_with_an_offset_or_on_the_local_clock() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    with_offset = parse_schedule("once", "2026-06-02T09:00+00:00", BERLIN)
    wall_clock = parse_schedule("once", "2026-06-02T09:00", BERLIN)
    assert first_slot(with_offset, now, BERLIN) == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    assert first_slot(wall_clock, now, BERLIN) == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)


def test_once_in_the_past_is_due_at_once_and_has_no_next_slot() -> None:
    schedule = parse_schedule("once", "2020-01-01T00:00Z", BERLIN)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    slot = first_slot(schedule, now, BERLIN)
    assert slot is not None and slot < now
    assert due_slot(schedule, slot, now, BERLIN) == (slot, None)


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("cron", "61 * * * *", "five fields"),
        ("cron", "* * * * * *", "five fields"),
        ("interval", "0s", "from 1 s"),
        ("interval", "5 weeks", "not an interval"),
        ("interval", "400d", "366 d"),
        ("once", "tomorrow", "ISO time"),
        ("weekly", "mon", "use one of cron, interval, once"),
    ],
)
def test_invalid_schedules_say_what_is_expected(kind: str, value: str, reason: str) -> None:
    with pytest.raises(ScheduleError, match=reason):
        parse_schedule(kind, value, BERLIN)
