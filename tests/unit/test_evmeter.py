"""The API-fed EV meter layered over a pilot: freshness and a continuous energy counter."""

from __future__ import annotations

from dataclasses import dataclass, replace

from evpilot.core.charger import PilotOutput, PilotReading
from evpilot.devices.evmeter import ApiFedEvMeter, EvMeterReading, MeteredPilot


@dataclass
class FakePilot:
    """A pilot whose reading the test sets directly."""

    reading: PilotReading
    written: PilotOutput | None = None

    def read(self) -> PilotReading:
        """The reading the test set."""
        return self.reading

    def write(self, output: PilotOutput) -> None:
        """Remember the output."""
        self.written = output


def test_api_values_replace_the_pilots_while_fresh_and_energy_stays_continuous() -> None:
    pilot = FakePilot(PilotReading(taken_at=0.0, letter="C", currents=(10, 10, 10), energy_kwh=5.0))
    meter = ApiFedEvMeter()
    mp = MeteredPilot(pilot, meter, timeout_s=11)
    assert mp.read().energy_kwh == 5.0
    pilot.reading = replace(pilot.reading, taken_at=1.0, energy_kwh=5.5)
    assert mp.read().energy_kwh == 5.5
    # The API meter's own counter is far higher: switching to it adds nothing at first...
    meter.push(EvMeterReading((6.0, 6.0, 6.0), 4140.0, 1234.0, taken_at=2.0))
    pilot.reading = replace(pilot.reading, taken_at=2.0, energy_kwh=5.6)
    r = mp.read()
    assert r.currents == (6.0, 6.0, 6.0) and r.energy_kwh == 5.5
    # ...then only its own increments count.
    meter.push(EvMeterReading(None, None, 1235.0, taken_at=3.0))
    pilot.reading = replace(pilot.reading, taken_at=3.0, energy_kwh=5.7)
    r = mp.read()
    assert r.currents == (10, 10, 10) and r.energy_kwh == 6.5
    # Stale after the timeout: back to the pilot's meter, again without a jump.
    pilot.reading = replace(pilot.reading, taken_at=20.0, energy_kwh=9.0)
    assert mp.read().energy_kwh == 6.5
    pilot.reading = replace(pilot.reading, taken_at=21.0, energy_kwh=9.25)
    assert mp.read().energy_kwh == 6.75
    out = PilotOutput(duty=10, signaled=6, contactor=True, phases=3, fallback_at=0, safe_current=6)
    mp.write(out)
    assert pilot.written is out


def test_a_meter_reset_adds_no_energy() -> None:
    pilot = FakePilot(PilotReading(taken_at=0.0, letter="C", energy_kwh=None))
    meter = ApiFedEvMeter()
    mp = MeteredPilot(pilot, meter, timeout_s=11)
    meter.push(EvMeterReading(None, None, 100.0, taken_at=0.0))
    assert mp.read().energy_kwh == 100.0
    meter.push(EvMeterReading(None, None, 2.0, taken_at=1.0))
    pilot.reading = replace(pilot.reading, taken_at=1.0)
    assert mp.read().energy_kwh == 100.0
    meter.push(EvMeterReading(None, None, 3.0, taken_at=2.0))
    pilot.reading = replace(pilot.reading, taken_at=2.0)
    assert mp.read().energy_kwh == 101.0
