"""An EV meter fed through an API (SmartEVSE `/Set/EVMeter`), layered over a charger's pilot."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from evpilot.core.charger import Phases, PilotOutput, PilotReading
from evpilot.devices.apifed import ImplausibleReading
from evpilot.devices.base import PilotHardware

log = logging.getLogger("evpilot")
# A meter counts whole Wh: a jump this small is always allowed (kWh).
ENERGY_SLACK_KWH = 0.002


@dataclass(frozen=True, slots=True)
class EvMeterReading:
    """One pushed EV meter reading; None = the sender does not know this value."""

    currents: Phases | None
    power_w: float | None
    energy_kwh: float | None
    taken_at: float


class ApiFedEvMeter:
    """The latest EV meter values pushed by an external sender."""

    def __init__(self, max_power_w: float | None = None) -> None:
        self.reading: EvMeterReading | None = None
        self.listeners: list[Callable[[], None]] = []
        self.max_power_w = max_power_w
        # The last accepted energy value and its time: the base of the plausibility check.
        self._energy_at: tuple[float, float] | None = None
        self.refused = 0

    def check(self, reading: EvMeterReading) -> None:
        """Raise ImplausibleReading if the energy rose more than MAX power allows since the last one."""
        if self.max_power_w is None or reading.energy_kwh is None or self._energy_at is None:
            return
        last_kwh, last_at = self._energy_at
        rise = reading.energy_kwh - last_kwh
        seconds = max(0.0, reading.taken_at - last_at)
        allowed = self.max_power_w * seconds / 3.6e6 + ENERGY_SLACK_KWH
        if rise > allowed:
            self.refused += 1
            message = (
                f"energy rose {rise:.3f} kWh in {seconds:.0f} s, more than the charger's "
                f"{self.max_power_w / 1000:.1f} kW allow ({allowed:.3f} kWh)"
            )
            log.warning("refused an EV meter reading: %s", message)
            raise ImplausibleReading("energy", message)

    def push(self, reading: EvMeterReading) -> None:
        """Store a plausible reading and tell listeners; raise ImplausibleReading otherwise."""
        self.check(reading)
        if reading.energy_kwh is not None:
            self._energy_at = (reading.energy_kwh, reading.taken_at)
        self.reading = reading
        for listener in self.listeners:
            listener()


class MeteredPilot:
    """A pilot whose EV meter values come from an API-fed meter while that meter is fresh.

    The energy counter handed to the charger stays continuous when the source switches
    between the pilot's own meter and the API meter (each source only adds its own deltas).
    """

    def __init__(self, inner: PilotHardware, meter: ApiFedEvMeter, timeout_s: float) -> None:
        self.inner = inner
        self.meter = meter
        self.timeout_s = timeout_s
        self._source: str | None = None
        self._raw: float | None = None
        self._total: float | None = None

    def _energy(self, source: str, raw: float | None) -> float | None:
        if raw is None:
            return self._total
        if self._total is None:
            self._total = raw
        elif source == self._source and self._raw is not None and raw > self._raw:
            self._total += raw - self._raw
        self._source, self._raw = source, raw
        return self._total

    def read(self) -> PilotReading:
        """The pilot's reading with the API meter's currents and energy when they are fresh."""
        base = self.inner.read()
        api = self.meter.reading
        if api is not None and base.taken_at - api.taken_at > self.timeout_s:
            api = None  # stale: the pilot's own values
        if api is None:
            raw = base.energy_kwh
            # `_energy` when the pilot's counter has not moved: nothing to add, the total as it is.
            if raw is not None and raw == self._raw and self._source == "pilot" and self._total is not None:
                energy: float | None = self._total
            else:
                energy = self._energy("pilot", raw)
            # Usually the pilot's own counter as it is: no copy (this runs per charger per tick).
            return base if energy == base.energy_kwh else replace(base, energy_kwh=energy)
        if api.currents is None:
            return replace(base, energy_kwh=self._energy("api", api.energy_kwh))
        return replace(
            base,
            currents=api.currents,
            energy_kwh=self._energy("api", api.energy_kwh),
            measured_at=api.taken_at,
        )

    def write(self, output: PilotOutput) -> None:
        """Pass the controller's output to the real pilot."""
        self.inner.write(output)
