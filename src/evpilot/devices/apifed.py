"""Meters fed through an API (REST, MQTT): the latest pushed value with its time."""

from __future__ import annotations

from collections.abc import Callable

from evpilot.core.charger import Phases
from evpilot.core.site import Reading


class ApiFedMeter:
    """A per-phase current meter whose values are pushed by an external sender."""

    def __init__(self, name: str = "mains") -> None:
        self.name = name
        self._reading: Reading | None = None
        self.listeners: list[Callable[[], None]] = []

    def push(self, currents: Phases, now: float) -> None:
        """Store a new reading and tell listeners (the runtime recomputes at once)."""
        self._reading = Reading(currents, now)
        for listener in self.listeners:
            listener()

    def latest(self) -> Reading | None:
        """The last pushed reading."""
        return self._reading


class ApiFedBattery:
    """Home battery current (A, + charging) pushed by an external sender."""

    def __init__(self) -> None:
        self.current: float | None = None
        self.at: float | None = None

    def push(self, amps: float, now: float) -> None:
        """Store a battery current reading."""
        self.current = amps
        self.at = now
