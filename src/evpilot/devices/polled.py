"""A meter read by its own polling task: timeouts, capped backoff, plausibility checks, fault counts."""

from __future__ import annotations

import asyncio
import logging
import math
from abc import ABC, abstractmethod

from evpilot.core.site import Reading
from evpilot.devices.meter import Clock, MeterFault, MeterHealth, MeterReading

log = logging.getLogger("evpilot.meters")
# After a failed poll the next one waits poll_s, then twice that, ... up to this (seconds).
BACKOFF_CAP_S = 10.0
# No meter on a house connection sees more than this per phase (A) or this voltage (V).
ABSURD_A = 2000.0
ABSURD_V = 500.0
# Energy counters may only grow; a drop this small is rounding (kWh) ...
ENERGY_SLACK_KWH = 0.001
# ... and a counter that reads lower this many polls in a row was reset or replaced: accepted then.
BACKWARDS_ACCEPT = 3


class MeterError(Exception):
    """One failed poll, with the fault it counts as."""

    def __init__(self, fault: MeterFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault
        self.message = message


def check_reading(reading: MeterReading) -> None:
    """Raise MeterError for a value no working meter reports (NaN, inf, absurd)."""
    values = [
        *reading.currents,
        *reading.voltages,
        *reading.powers,
        reading.power,
        reading.import_kwh,
        reading.export_kwh,
        reading.frequency,
    ]
    for value in values:
        if value is not None and not math.isfinite(value):
            raise MeterError(MeterFault.NON_FINITE, f"the meter reported {value}")
    for i, amps in enumerate(reading.currents):
        if abs(amps) > ABSURD_A:
            raise MeterError(MeterFault.ABSURD, f"L{i + 1} {amps:g} A is beyond ±{ABSURD_A:g} A")
    for i, volts in enumerate(reading.voltages):
        if volts is not None and not 0 <= volts <= ABSURD_V:
            raise MeterError(MeterFault.ABSURD, f"L{i + 1} {volts:g} V is outside 0 to {ABSURD_V:g} V")
    for what, kwh in (("import", reading.import_kwh), ("export", reading.export_kwh)):
        if kwh is not None and kwh < 0:
            raise MeterError(MeterFault.ABSURD, f"{what} energy {kwh:g} kWh is negative")
    if reading.frequency is not None and not 40 <= reading.frequency <= 70:
        raise MeterError(MeterFault.ABSURD, f"frequency {reading.frequency:g} Hz is outside 40 to 70 Hz")


class PolledMeter(ABC):
    """Base of the network meters: `fetch` reads the device once, everything else is shared."""

    driver_type = ""

    def __init__(
        self,
        name: str,
        clock: Clock,
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self.name = name
        self.clock = clock
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.backoff_cap_s = max(backoff_cap_s, poll_s)
        self._health = MeterHealth()
        self._full: MeterReading | None = None
        self._reading: Reading | None = None
        self._backwards = 0
        self.failures = 0

    @property
    def driver(self) -> str:
        """The driver's config `type`."""
        return self.driver_type

    @property
    def model(self) -> str | None:
        """The device model, when the device names it."""
        return None

    @property
    @abstractmethod
    def address(self) -> str:
        """Where the meter is reached."""

    @abstractmethod
    async def fetch(self) -> MeterReading:
        """Read the device once, stamped with the clock (subclasses; raise MeterError on a fault)."""

    async def close(self) -> None:
        """Release the connection (subclasses that hold one)."""
        return None

    def latest(self) -> Reading | None:
        """The newest valid per-phase current reading."""
        return self._reading

    def full(self) -> MeterReading | None:
        """The newest valid full reading."""
        return self._full

    def health(self) -> MeterHealth:
        """Fault counters and link state."""
        return self._health

    def _check_energy(self, reading: MeterReading) -> None:
        last = self._full
        if last is None:
            return
        for what, new, old in (
            ("import", reading.import_kwh, last.import_kwh),
            ("export", reading.export_kwh, last.export_kwh),
        ):
            if new is not None and old is not None and new < old - ENERGY_SLACK_KWH:
                self._backwards += 1
                if self._backwards >= BACKWARDS_ACCEPT:
                    log.warning(
                        "meter %s: %s counter reset (%g → %g kWh), accepted", self.name, what, old, new
                    )
                    self._backwards = 0
                    return
                raise MeterError(MeterFault.BACKWARDS, f"{what} energy ran backwards ({old:g} → {new:g} kWh)")
        self._backwards = 0

    async def poll(self) -> bool:
        """Read once and keep the reading if it is plausible; count and log a fault otherwise."""
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    reading = await self.fetch()
            except TimeoutError:
                raise MeterError(MeterFault.TIMEOUT, f"no answer within {self.timeout_s:g} s") from None
            check_reading(reading)
            self._check_energy(reading)
        except MeterError as exc:
            self.failures += 1
            if self._health.count(exc.fault, exc.message):
                log.warning("meter %s (%s): %s", self.name, self.address, exc.message)
            return False
        self.failures = 0
        if self._health.ok():
            log.info("meter %s (%s): readings again", self.name, self.address)
        self._full = reading
        self._reading = reading.reading()
        return True

    def next_delay(self) -> float:
        """Seconds to the next poll: poll_s, doubled per failure in a row up to the cap."""
        if self.failures == 0:
            return self.poll_s
        return min(self.backoff_cap_s, self.poll_s * 2.0 ** (self.failures - 1))

    async def run(self) -> None:
        """Poll until cancelled; device faults are counted, never raised."""
        try:
            while True:
                await self.poll()
                await asyncio.sleep(self.next_delay())
        finally:
            await self.close()
