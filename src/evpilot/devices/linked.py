"""Adapters that let the engine run chargers behind a ChargerLink or with a separate EV meter driver."""

from __future__ import annotations

from dataclasses import replace

from evpilot.core.charger import PilotOutput, PilotReading
from evpilot.devices.base import ChargerLink, HoldingLink, PilotHardware, Setpoint, TransactionLink
from evpilot.devices.meter import Clock, MeterDriver

# The time a never-read value counts as measured at: always stale.
NEVER = 0.0


class LinkedPilot:
    """A ChargerLink seen as pilot hardware: the charger's decisions become setpoint leases.

    The engine keeps deciding (current chain, contactor wish, phase count); the link gets the
    signalled current and phase count with the allocation's lease expiry, and its cached reading
    comes back with the time it was taken, so a silent link's charger goes stale like a silent meter.
    """

    def __init__(self, link: ChargerLink, clock: Clock) -> None:
        self.link = link
        self.clock = clock
        self.last: Setpoint | None = None
        self._held = link.held if isinstance(link, HoldingLink) else None
        self._transactions = link.transactions if isinstance(link, TransactionLink) else None

    def held(self, now: float) -> float:
        """What the charger may draw above its last setpoint (`HoldingLink.held`); 0 when it follows."""
        if self._held is None:
            return 0.0
        amps = self._held(now)
        if amps is None or (self.last is not None and amps <= self.last.current):
            return 0.0
        return amps

    def read(self) -> PilotReading:
        """The link's last reading; before the first one the charger counts as free (state A)."""
        now = self.clock()
        r = self.link.latest()
        tx = self._transactions() if self._transactions is not None else None
        if r is None:
            return PilotReading(now, "A", measured_at=NEVER, held=self.held(now), transactions=tx)
        temperature = 25.0 if r.temperature is None else r.temperature
        return PilotReading(
            now,
            r.state,
            r.currents,
            r.voltages,
            r.energy_kwh,
            temperature,
            measured_at=min(now, r.taken_at),
            held=self.held(now),
            transactions=tx,
        )

    def write(self, output: PilotOutput) -> None:
        """Send the decision as a setpoint lease."""
        sp = Setpoint(output.signaled, output.phases, output.fallback_at, output.safe_current)
        self.last = sp
        self.link.send(sp)


class DriverMeteredPilot:
    """A pilot whose currents, voltages and energy come from a separate EV meter driver.

    The charger's measured values carry the meter's reading time, so the balancer's stale rule
    applies to this EV meter on its own; before the first reading the draw counts as unknown.
    """

    def __init__(self, inner: PilotHardware, meter: MeterDriver) -> None:
        self.inner = inner
        self.meter = meter

    def read(self) -> PilotReading:
        """The pilot's letter and sensors with the EV meter's values and time."""
        base = self.inner.read()
        r = self.meter.full()
        if r is None:
            return replace(base, energy_kwh=None, measured_at=NEVER)
        volts = tuple(b if v is None else v for v, b in zip(r.voltages, base.voltages, strict=True))
        return replace(
            base,
            currents=r.currents,
            voltages=(volts[0], volts[1], volts[2]),
            energy_kwh=r.import_kwh,
            measured_at=min(base.taken_at, r.taken_at),
        )

    def write(self, output: PilotOutput) -> None:
        """Pass the controller's output to the pilot."""
        self.inner.write(output)
