"""Adapters that expose the simulator as drivers: its mains meter, and its chargers at setpoint level."""

from __future__ import annotations

from evpilot.core.charger import PilotOutput
from evpilot.core.iec61851 import MIN_CURRENT, duty_for_current
from evpilot.core.site import Reading
from evpilot.devices.base import LinkReading, Setpoint
from evpilot.sim.site import SimPilot, SimSite


class SimMainsMeter:
    """The simulated site's mains meter as a MeterSource."""

    def __init__(self, site: SimSite) -> None:
        self.site = site
        self.enabled = True
        self._last: Reading | None = None

    def latest(self) -> Reading | None:
        """The simulator's mains currents now; while switched off, the last one it sent."""
        if self.enabled:
            # `site.mains_meter().as_reading()` without the powers and counters it would drop.
            m = self.site.mains_currents
            self._last = Reading((round(m[0], 3), round(m[1], 3), round(m[2], 3)), self.site.now)
        return self._last

    def within(self, lo: float, hi: float) -> bool:
        """Every phase of the reading `latest` would give now is within [lo, hi] (without building it
        where the simulator's currents are clear of the bounds by more than the rounding)."""
        if self.enabled:
            a, b, c = self.site.mains_currents
            if (
                lo + 0.001 <= a <= hi - 0.001
                and lo + 0.001 <= b <= hi - 0.001
                and lo + 0.001 <= c <= hi - 0.001
            ):
                return True
        reading = self.latest()
        return reading is None or all(lo <= x <= hi for x in reading.currents)


class SimLink:
    """A simulated charger that runs its own pilot, driven at setpoint level (`driver: {type: simlink}`).

    It behaves as a charger's firmware does: it offers the setpoint's current to the car, closes its
    contactor while the car asks for charge, and falls back to the setpoint's safe current by itself
    when the setpoint expires. Its readings are sampled after each simulator step; while `online` is
    False it neither takes setpoints nor reports, so its last reading ages like a silent device's.
    """

    def __init__(self, name: str, pilot: SimPilot) -> None:
        self.name = name
        self.pilot = pilot
        self.online = True
        self.setpoint: Setpoint | None = None
        self.sent = 0
        self._reading: LinkReading | None = None

    @property
    def driver(self) -> str:
        """The config `type`."""
        return "simlink"

    @property
    def address(self) -> str:
        """The simulated charger it drives."""
        return f"simulator:{self.pilot.config.id}"

    def send(self, setpoint: Setpoint) -> None:
        """Take a new setpoint (lost while offline, as a write to an unreachable device is)."""
        if not self.online:
            return
        self.setpoint = setpoint
        self.sent += 1
        self._firmware()

    def _firmware(self) -> None:
        sp = self.setpoint
        pilot = self.pilot
        if sp is None:
            pilot.write(PilotOutput(100.0, 0.0, False, pilot.phases, float("inf"), 0.0))
            return
        current = sp.current
        if pilot.site.now >= sp.expires_at:
            current = min(current, sp.safe_current)
        offered = current >= MIN_CURRENT
        car = pilot.car
        contactor = offered and car is not None and car.letter in ("C", "D")
        duty = duty_for_current(current) if offered else 100.0
        pilot.write(
            PilotOutput(
                duty, current if offered else 0.0, contactor, sp.phases, sp.expires_at, sp.safe_current
            )
        )

    def sample(self) -> None:
        """Run the firmware's contactor logic and take a reading (after each simulator step)."""
        if not self.online:
            return
        self._firmware()
        r = self.pilot.read()
        self._reading = LinkReading(r.taken_at, r.letter, r.currents, r.energy_kwh, r.voltages, r.temperature)

    def latest(self) -> LinkReading | None:
        """The last reading the simulated charger reported."""
        return self._reading

    async def run(self) -> None:
        """Nothing to do: the simulator is stepped by the control loop."""
