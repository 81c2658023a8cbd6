"""A charger's start/stop schedule (SmartEVSE delayed charging): which switch is due at a given time."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

DAY_S = 86400.0


class ScheduleAction(Enum):
    """What a due schedule does to its charger: allow charging, or stop it."""

    START = "start"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Schedule:
    """Start and stop times (clock epoch seconds, None = none); `repeat` moves each on by a day once done."""

    start_at: float | None = None
    stop_at: float | None = None
    repeat: bool = False

    @property
    def empty(self) -> bool:
        """Nothing left to fire."""
        return self.start_at is None and self.stop_at is None


def due(schedule: Schedule, now: float) -> tuple[ScheduleAction | None, Schedule]:
    """The switch to make at `now` (None: none) and the schedule that remains.

    A time at or before `now` has fired: once, it is cleared; daily, it moves to its next occurrence
    after `now`. When both fired (the clock jumped, or evpilot was down), the later occurrence wins:
    the charger ends up as the schedule would have left it.
    """
    fired: list[tuple[float, ScheduleAction]] = []
    start_at, stop_at = schedule.start_at, schedule.stop_at
    if start_at is not None and start_at <= now:
        last = _last(start_at, now, schedule.repeat)
        fired.append((last, ScheduleAction.START))
        start_at = last + DAY_S if schedule.repeat else None
    if stop_at is not None and stop_at <= now:
        last = _last(stop_at, now, schedule.repeat)
        fired.append((last, ScheduleAction.STOP))
        stop_at = last + DAY_S if schedule.repeat else None
    if not fired:
        return None, schedule
    # On a tie the stop wins: a window of no length charges nothing.
    action = max(fired, key=lambda f: (f[0], f[1] is ScheduleAction.STOP))[1]
    rest = replace(schedule, start_at=start_at, stop_at=stop_at)
    if rest.empty:
        rest = Schedule()
    return action, rest


def _last(at: float, now: float, repeat: bool) -> float:
    """The latest occurrence of `at` (daily if `repeat`) at or before `now`."""
    if not repeat:
        return at
    return at + math.floor((now - at) / DAY_S) * DAY_S
