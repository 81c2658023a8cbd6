"""The Protocols every driver implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from evpilot.core.charger import DeviceTransactions, PilotOutput, PilotReading
from evpilot.core.site import Reading
from evpilot.core.units import Phases


class PilotHardware(Protocol):
    """A charger's pilot, contactor and EV meter."""

    def read(self) -> PilotReading:
        """The latest pilot letter, currents, energy and sensor values."""

    def write(self, output: PilotOutput) -> None:
        """Apply PWM duty, contactor state and phase count."""


class PilotSleep(Protocol):
    """Pilots that need not be stepped, read or written while nothing about them changes (the
    simulator's): the engine puts a settled charger's pilot to sleep during `Engine.run`."""

    def sleep(self, pilot: object) -> bool:
        """Stop stepping `pilot` (False: it may not sleep now, or is not one of these)."""

    def wake(self, pilot: object) -> None:
        """Step `pilot` again, caught up with the steps it slept through."""

    def woken(self) -> list[str]:
        """The chargers whose pilot woke by itself since the last call (a car came or left)."""

    def reading_time(self) -> float:
        """The time a reading taken now carries (`PilotReading.taken_at`)."""


class MeterSource(Protocol):
    """A meter whose latest reading can be asked for without waiting."""

    def latest(self) -> Reading | None:
        """The newest reading, or None if none arrived yet."""


@dataclass(frozen=True, slots=True)
class Setpoint:
    """What a setpoint-level charger is told: a current per phase (0 = no charging) and a phase count.

    The setpoint is a lease: past `expires_at` (clock seconds) without a newer one the charger must
    fall back to `safe_current` on its own, as a pilot driver does with its fallback timer.
    """

    current: float
    phases: int
    expires_at: float
    safe_current: float


@dataclass(frozen=True, slots=True)
class LinkReading:
    """What a setpoint-level charger last reported, stamped with the clock time it was read."""

    taken_at: float
    # The IEC 61851 state letter (A: no car, B: car connected, C/D: charging, E/F: fault).
    state: str
    currents: Phases
    energy_kwh: float | None = None
    voltages: Phases = (230.0, 230.0, 230.0)
    temperature: float | None = None


class ChargerLink(Protocol):
    """A charger that runs its own pilot: evpilot sends it setpoints and reads back its state.

    Drivers do their I/O in their own task (`run`); `send` only stores the setpoint for that task
    and `latest` only returns the cached reading, so the control tick never waits for a device.
    """

    name: str

    @property
    def driver(self) -> str:
        """The driver's config `type`."""

    @property
    def address(self) -> str:
        """Where the charger is reached, for humans."""

    def send(self, setpoint: Setpoint) -> None:
        """Hand over the newest setpoint (the link's task delivers it)."""

    def latest(self) -> LinkReading | None:
        """The newest reading, or None if none arrived yet."""

    async def run(self) -> None:
        """Talk to the charger until cancelled (returns at once for a link without I/O of its own)."""


@runtime_checkable
class HoldingLink(Protocol):
    """A link that knows when its charger may apply a limit other than the last setpoint it was sent."""

    def held(self, now: float) -> float | None:
        """The limit the charger may still apply (a refused or undelivered lower setpoint leaves the one
        it acknowledged in force, until its lease ends), or None when it follows the setpoints."""


@runtime_checkable
class TransactionLink(Protocol):
    """A link whose charger runs its own transactions (an OCPP wallbox): evpilot's sessions follow them."""

    def transactions(self) -> DeviceTransactions:
        """The transactions the charger started and ended so far, and whether one runs."""


class SwitchInput(Protocol):
    """A GPIO input wired to a button, a toggle switch or a relay contact."""

    def closed(self) -> bool | None:
        """The contact is closed (True), open (False), or not known yet (None)."""


class CardReader(Protocol):
    """An RFID reader: the uids presented since the last call, oldest first."""

    def take(self) -> list[str]:
        """The uids read since the last call (as the reader reports them, not normalised)."""


class LockActuator(Protocol):
    """A socket's cable lock: a solenoid or a motor with position feedback."""

    def drive(self, lock: bool) -> None:
        """Start locking (True) or unlocking (False)."""

    def sensed(self) -> bool | None:
        """The feedback: locked (True), unlocked (False), or not known (None)."""


@runtime_checkable
class LockingLink(Protocol):
    """A charger driver whose device has a cable lock it lets evpilot drive."""

    def lock_actuator(self) -> LockActuator | None:
        """The device's lock as an actuator (None when this device has none to drive)."""
