"""The meter driver boundary: full timestamped readings, fault counts, and the driver Protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from evpilot.core.site import Reading
from evpilot.core.units import Phases

# The runtime's clock (sim time when simulated, wall time otherwise); readings are stamped with it.
Clock = Callable[[], float]
Triple = tuple[float | None, float | None, float | None]


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One decoded meter reading; currents signed (+ import, − export), None where the model has no value."""

    taken_at: float
    currents: Phases
    voltages: Triple = (None, None, None)
    powers: Triple = (None, None, None)
    power: float | None = None
    import_kwh: float | None = None
    export_kwh: float | None = None
    frequency: float | None = None

    def reading(self) -> Reading:
        """The per-phase current reading the engine balances on."""
        return Reading(self.currents, self.taken_at)


class MeterFault(StrEnum):
    """Why a poll gave no usable reading."""

    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    EXCEPTION = "exception_response"
    CRC = "crc"
    PROTOCOL = "protocol"
    NON_FINITE = "non_finite"
    ABSURD = "absurd"
    BACKWARDS = "energy_backwards"
    AUTH = "auth"


@dataclass(slots=True)
class MeterHealth:
    """A driver's fault counters and link state (mutable, owned by the driver)."""

    online: bool = False
    errors: dict[MeterFault, int] = field(default_factory=dict)
    last_error: str | None = None
    reads: int = 0

    def count(self, fault: MeterFault, message: str) -> bool:
        """Count a fault; True when it starts a new episode (log it once then)."""
        self.errors[fault] = self.errors.get(fault, 0) + 1
        new_episode = self.online or self.last_error is None
        self.online = False
        self.last_error = message
        return new_episode

    def ok(self) -> bool:
        """Record a good read; True when it ends a fault episode (log the recovery)."""
        self.reads += 1
        recovered = not self.online and self.last_error is not None
        self.online = True
        return recovered


class MeterDriver(Protocol):
    """A meter polled by its own task; the tick only ever reads the cached values."""

    name: str

    @property
    def driver(self) -> str:
        """The driver's config `type` (sim, api, modbus, homewizard, shelly)."""

    @property
    def model(self) -> str | None:
        """The register map or device model, None where it does not apply."""

    @property
    def address(self) -> str:
        """Where the meter is reached, for humans (`192.168.1.50:502 unit 1`, `/dev/ttyUSB0 unit 3`)."""

    def latest(self) -> Reading | None:
        """The newest valid per-phase current reading, or None if none arrived yet."""

    def full(self) -> MeterReading | None:
        """The newest valid full reading (voltages, powers, energies), or None."""

    def health(self) -> MeterHealth:
        """Fault counters and whether the last poll succeeded."""

    async def run(self) -> None:
        """Poll the meter until cancelled; never raises for a device fault."""
