"""Meters fed through an API (REST, MQTT): the latest pushed value with its time."""

from __future__ import annotations

import logging
from collections.abc import Callable

from evpilot.core.charger import Phases
from evpilot.core.errors import CommandError
from evpilot.core.site import Reading

log = logging.getLogger("evpilot")


class ImplausibleReading(CommandError):
    """A pushed reading no real meter could give; `phase` is the index of the offending value."""

    def __init__(self, field: str, message: str, phase: int = 0) -> None:
        super().__init__(field, message)
        self.phase = phase


class ApiFedMeter:
    """A per-phase current meter whose values are pushed by an external sender."""

    def __init__(self, name: str = "mains") -> None:
        self.name = name
        self._reading: Reading | None = None
        self.listeners: list[Callable[[], None]] = []
        # The largest plausible |current| per phase (A), None = unchecked.
        self.bound: Callable[[], float] | None = None
        self.refused = 0

    def check(self, currents: Phases) -> None:
        """Raise ImplausibleReading if a phase is beyond the bound."""
        if self.bound is None:
            return
        bound = self.bound()
        for i, amps in enumerate(currents):
            if not abs(amps) <= bound:
                self.refused += 1
                message = f"L{i + 1} {amps:g} A is beyond ±{bound:g} A, implausible for the {self.name} meter"
                log.warning("refused a %s reading: %s", self.name, message)
                raise ImplausibleReading(f"currents[{i}]", message, i)

    def push(self, currents: Phases, now: float) -> None:
        """Store a new reading and tell listeners (the runtime recomputes at once)."""
        self.check(currents)
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
