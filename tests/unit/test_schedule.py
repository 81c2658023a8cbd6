"""The start/stop schedule decision (core.schedule.due)."""

from __future__ import annotations

from evpilot.core.schedule import DAY_S, Schedule, ScheduleAction, due

T0 = 1_700_000_000.0


def test_nothing_is_due_before_the_start() -> None:
    s = Schedule(start_at=T0 + 60, stop_at=T0 + 120)
    assert due(s, T0) == (None, s)
    assert due(s, T0 + 59.9) == (None, s)
    assert due(Schedule(), T0) == (None, Schedule())


def test_once_fires_start_then_stop_and_clears() -> None:
    s = Schedule(start_at=T0 + 60, stop_at=T0 + 120)
    action, s = due(s, T0 + 60)
    assert action is ScheduleAction.START
    assert s == Schedule(start_at=None, stop_at=T0 + 120)
    assert due(s, T0 + 119) == (None, s)
    action, s = due(s, T0 + 121)
    assert action is ScheduleAction.STOP
    assert s.empty and not s.repeat


def test_daily_moves_each_time_on_by_a_day() -> None:
    s = Schedule(start_at=T0 + 60, stop_at=T0 + 120, repeat=True)
    action, s = due(s, T0 + 61)
    assert action is ScheduleAction.START
    assert s == Schedule(start_at=T0 + 60 + DAY_S, stop_at=T0 + 120, repeat=True)
    action, s = due(s, T0 + 130)
    assert action is ScheduleAction.STOP
    assert s == Schedule(start_at=T0 + 60 + DAY_S, stop_at=T0 + 120 + DAY_S, repeat=True)
    action, s = due(s, T0 + 60 + DAY_S)
    assert action is ScheduleAction.START


def test_after_a_gap_the_later_occurrence_wins() -> None:
    # Both passed once: the stop came last, the charger ends stopped.
    action, s = due(Schedule(start_at=T0 + 60, stop_at=T0 + 120), T0 + 1000)
    assert (action, s.empty) == (ScheduleAction.STOP, True)
    # Daily, three days later at a time inside the window: the start of that day came last.
    daily = Schedule(start_at=T0 + 60, stop_at=T0 + 3600, repeat=True)
    action, s = due(daily, T0 + 3 * DAY_S + 1800)
    assert action is ScheduleAction.START
    assert s == Schedule(start_at=T0 + 60 + 4 * DAY_S, stop_at=T0 + 3600 + 3 * DAY_S, repeat=True)
    # ... and outside the window: the stop of that day came last.
    action, s = due(daily, T0 + 3 * DAY_S + 7200)
    assert action is ScheduleAction.STOP
    assert s.start_at is not None and s.start_at > T0 + 3 * DAY_S + 7200
    assert s.stop_at is not None and s.stop_at > T0 + 3 * DAY_S + 7200


def test_start_only_and_stop_only() -> None:
    action, s = due(Schedule(start_at=T0), T0)
    assert (action, s) == (ScheduleAction.START, Schedule())
    action, s = due(Schedule(stop_at=T0, repeat=True), T0 + 5)
    assert (action, s) == (ScheduleAction.STOP, Schedule(stop_at=T0 + DAY_S, repeat=True))
