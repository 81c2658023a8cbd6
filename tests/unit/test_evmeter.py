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


def test_a_pilot_counter_that_does_not_move_adds_nothing_on_either_source() -> None:
    """Flat counters, also where the pilot's and the API meter's raw values happen to be equal."""
    pilot = FakePilot(PilotReading(taken_at=0.0, letter="B", energy_kwh=7.0))
    mp = MeteredPilot(pilot, ApiFedEvMeter(), timeout_s=11)
    for t in (0.0, 1.0, 2.0):
        pilot.reading = replace(pilot.reading, taken_at=t)
        r = mp.read()
        assert r is pilot.reading  # the pilot's own counter, no copy
    meter = ApiFedEvMeter()
    mp = MeteredPilot(pilot, meter, timeout_s=11)
    assert mp.read().energy_kwh == 7.0
    # The API meter counts from 7.0 too, then moves by 1 kWh: a total of 8.0.
    meter.push(EvMeterReading(None, None, 7.0, taken_at=3.0))
    pilot.reading = replace(pilot.reading, taken_at=3.0)
    assert mp.read().energy_kwh == 7.0
    meter.push(EvMeterReading(None, None, 8.0, taken_at=4.0))
    pilot.reading = replace(pilot.reading, taken_at=4.0)
    assert mp.read().energy_kwh == 8.0
    # Stale: back on the pilot's counter (still 7.0, as the API meter was at its last reading) with
    # no jump, and staying flat.
    for t in (20.0, 21.0, 22.0):
        pilot.reading = replace(pilot.reading, taken_at=t)
        assert mp.read().energy_kwh == 8.0
    pilot.reading = replace(pilot.reading, taken_at=23.0, energy_kwh=7.5)
    assert mp.read().energy_kwh == 8.5
