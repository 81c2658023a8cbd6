"""The Protocols every driver implements."""

from __future__ import annotations

from typing import Protocol

from evpilot.core.charger import PilotOutput, PilotReading
from evpilot.core.site import Reading


class PilotHardware(Protocol):
    """A charger's pilot, contactor and EV meter."""

    def read(self) -> PilotReading:
        """The latest pilot letter, currents, energy and sensor values."""

    def write(self, output: PilotOutput) -> None:
        """Apply PWM duty, contactor state and phase count."""


class MeterSource(Protocol):
    """A meter whose latest reading can be asked for without waiting."""

    def latest(self) -> Reading | None:
        """The newest reading, or None if none arrived yet."""
