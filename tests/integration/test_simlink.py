"""A charger behind a setpoint-level ChargerLink (the simulated `simlink` driver), end to end."""

from __future__ import annotations

from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from evpilot.core.iec61851 import current_for_duty
from evpilot.devices.base import Setpoint
from evpilot.devices.linked import LinkedPilot
from evpilot.devices.sim import SimLink
from tests.helpers import make_config

CONFIG = {
    "site": {"mains_limit": 25, "meter_timeout_s": 11},
    "chargers": [{"id": "cp1", "driver": {"type": "simlink"}, "safe_current": 6}],
    "sim": {"pv_kwp": 0, "spike_rate_h": 0, "first_spike_s": None, "house_base": [2, 2, 2]},
    "control": {"tick_s": 1, "lease_ticks": 5},
}


def run_for(rt: Runtime, clock: ManualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1)
        rt.tick()


def test_engine_runs_a_charger_through_setpoint_leases() -> None:
    clock = ManualClock()
    rt = Runtime(make_config(CONFIG), clock)
    link = rt.links["cp1"]
    assert isinstance(link, SimLink) and link.driver == "simlink" and link.address == "simulator:cp1"
    assert isinstance(rt.engine.pilots["cp1"].inner, LinkedPilot)  # type: ignore[attr-defined]
    run_for(rt, clock, 60)
    ch = rt.engine.chargers["cp1"]
    assert ch.session is not None and ch.letter == "C"
    # The engine decided; the link got the decision as a lease that lapses after lease_ticks ticks.
    sp = link.setpoint
    assert sp == Setpoint(ch.signaled, ch.active_phases, clock.now() + 5, 6.0)
    assert 20 <= ch.signaled <= 23.5  # 25 A mains, about 2 A house
    # The link's readings feed the charger, with the time the link took them.
    reading = link.latest()
    assert reading is not None and reading.taken_at == clock.now()
    assert ch.currents == reading.currents and max(ch.currents) > 20
    assert ch.reading_at == reading.taken_at
    energy = ch.session.energy_kwh
    run_for(rt, clock, 60)
    assert ch.session.energy_kwh > energy + 0.2
    doc = rt.charger_doc("cp1")
    assert doc["charging"] is True and doc["amperage"] == [round(a, 2) for a in ch.currents]


def test_a_silent_link_goes_stale_and_the_charger_falls_back_on_its_own() -> None:
    clock = ManualClock()
    rt = Runtime(make_config(CONFIG), clock)
    link = rt.links["cp1"]
    assert isinstance(link, SimLink)
    run_for(rt, clock, 60)
    ch = rt.engine.chargers["cp1"]
    sent = link.sent
    assert link.setpoint is not None
    sent_current = link.setpoint.current
    assert sent_current > 6.5
    link.online = False
    run_for(rt, clock, 12)
    # No reading for over meter_timeout_s: the engine treats the charger's draw as stale ...
    assert ch.allocation_source.text == "stale:charger"
    assert link.sent == sent  # ... and nothing reached the silent device,
    # which dropped to the safe current by itself once the last setpoint's lease ran out.
    pilot = link.pilot
    assert current_for_duty(pilot.duty) == sent_current  # the last setpoint still shows ...
    assert max(pilot.currents) <= 6.05
    link.online = True
    run_for(rt, clock, 30)
    assert ch.allocation_source.text != "stale:charger"
    assert link.sent > sent
    assert max(ch.currents) > 6.5
