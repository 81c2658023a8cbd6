"""The runtime's overload monitor: events per node from 6 s on, only while a charger below draws."""

from __future__ import annotations

from dataclasses import replace

from evpilot.control.clock import ManualClock
from evpilot.control.overload import OverloadMonitor
from evpilot.control.runtime import Runtime
from evpilot.core import sources
from evpilot.core.balancer import compute
from evpilot.core.site import Allocation, ChargerAllocation, Snapshot
from tests.helpers import make_config


def run(monitor: OverloadMonitor, loads: list[float], drawing: bool = True, start: float = 0.0) -> None:
    for i, load in enumerate(loads):
        monitor.see(start + i, "mains", 0, load, 25.0, drawing, 1.0)


def test_an_overload_counts_as_an_event_from_6_s_on() -> None:
    m = OverloadMonitor()
    run(m, [26.0] * 5 + [20.0])
    assert m.nodes["mains"].events == 0 and m.nodes["mains"].longest_s == 5.0
    run(m, [26.0] * 6 + [20.0], start=10)
    assert m.nodes["mains"].events == 1 and m.nodes["mains"].longest_s == 6.0
    # A long one is still one event.
    run(m, [26.0] * 40 + [20.0], start=20)
    assert m.nodes["mains"].events == 2 and m.nodes["mains"].longest_s == 40.0


def test_the_house_alone_and_noise_are_not_overloads() -> None:
    m = OverloadMonitor()
    run(m, [40.0] * 30, drawing=False)
    run(m, [25.04] * 30, start=100)
    assert m.nodes["mains"].events == 0 and m.nodes["mains"].longest_s == 0.0


def test_a_stalled_tick_counts_its_whole_gap() -> None:
    m = OverloadMonitor()
    m.see(0.0, "mains", 1, 30.0, 25.0, True, 1.0)
    m.see(7.0, "mains", 1, 30.0, 25.0, True, 1.0)
    assert m.nodes["mains"].events == 1 and m.nodes["mains"].longest_s == 8.0


def test_a_run_across_a_stalled_controller_is_counted_apart() -> None:
    m = OverloadMonitor()
    # Ticks every second, then the process is starved for 7 s while the phase is over.
    for t in (0.0, 1.0):
        m.begin(t, 1.0)
        m.see(t, "mains", 1, 30.0, 25.0, True, 1.0)
    m.begin(8.0, 1.0)
    m.see(8.0, "mains", 1, 30.0, 25.0, True, 1.0)
    assert m.nodes["mains"].events == 0 and m.nodes["mains"].stalled == 1
    assert m.nodes["mains"].longest_s == 9.0
    m.begin(9.0, 1.0)
    m.see(9.0, "mains", 1, 20.0, 25.0, True, 1.0)
    # A run on time afterwards is an event again.
    for t in range(10, 17):
        m.begin(float(t), 1.0)
        m.see(float(t), "mains", 1, 30.0 if t < 16 else 20.0, 25.0, True, 1.0)
    assert m.nodes["mains"].events == 1 and m.nodes["mains"].stalled == 1


QUIET = {"sim": {"first_spike_s": None, "spike_rate_h": 0}}
CIRCUIT = {
    **QUIET,
    "site": {"circuits": [{"name": "garage", "limit": 16}]},
    "chargers": [{"id": "cp1", "circuit": "garage"}],
}


def _everyone_at_max(snapshot: Snapshot, now: float) -> Allocation:
    out = compute(snapshot, now)
    chargers = {
        ci.config.id: ChargerAllocation(ci.config.max_current, out.chargers[ci.config.id].phases, sources.MAX)
        for ci in snapshot.chargers
    }
    return replace(out, chargers=chargers)


def ticks(rt: Runtime, clock: ManualClock, n: int) -> None:
    for _ in range(n):
        clock.advance(1.0)
        rt.tick()


def test_the_site_document_counts_overloads_of_the_real_engine_and_of_a_fuse_ignoring_one() -> None:
    clock = ManualClock()
    rt = Runtime(make_config(CIRCUIT), clock)
    rt.tick()
    ticks(rt, clock, 120)
    doc = rt.site_doc()["overloads"]
    assert set(doc) == {"mains", "circuit:garage"}
    assert all(v["events"] == 0 for v in doc.values()), doc
    assert rt.charger("cp1").currents[0] > 10  # the car draws up to the 16 A circuit
    rt.engine.compute = _everyone_at_max
    ticks(rt, clock, 30)
    doc = rt.site_doc()["overloads"]
    assert doc["circuit:garage"]["events"] == 3  # one per phase
    assert doc["circuit:garage"]["over_now"] is True
    assert doc["mains"]["events"] == 3  # 32 A on a 25 A mains


def test_a_fresh_circuit_reading_is_the_circuits_load() -> None:
    clock = ManualClock()
    config = {**CIRCUIT, "site": {"circuits": [{"name": "garage", "limit": 16, "meter": "api"}]}}
    rt = Runtime(make_config(config), clock)
    rt.tick()
    meter = rt.engine.circuit_meters["garage"]
    for _ in range(60):
        meter.push((10.0, 10.0, 10.0), clock.now())  # type: ignore[attr-defined]
        ticks(rt, clock, 1)
    assert rt.charger("cp1").currents[0] > 1
    # The reading says 20 A where the chargers alone draw less: the reading is what counts.
    rt.engine.compute = _everyone_at_max
    for _ in range(10):
        meter.push((20.0, 10.0, 10.0), clock.now())  # type: ignore[attr-defined]
        ticks(rt, clock, 1)
    assert rt.site_doc()["overloads"]["circuit:garage"]["events"] == 1


def test_between_two_circuit_readings_the_load_follows_the_chargers_draw() -> None:
    clock = ManualClock()
    config = {**CIRCUIT, "site": {"circuits": [{"name": "garage", "limit": 16, "meter": "api"}]}}
    rt = Runtime(make_config(config), clock)
    rt.tick()
    meter = rt.engine.circuit_meters["garage"]
    other = [2.0, 2.0, 2.0]

    def read() -> None:
        draw = rt.charger("cp1").currents
        meter.push(tuple(other[p] + draw[p] for p in range(3)), clock.now())  # type: ignore[attr-defined]

    # A meter read every 10 s (within the 11 s timeout): the car fills the circuit.
    for t in range(120):
        if t % 10 == 0:
            read()
        ticks(rt, clock, 1)
    assert rt.charger("cp1").currents[0] > 12
    # The other load steps up by 3 A; the next reading shows the circuit over its fuse. The charger is
    # lowered at once and its car follows within 5 s, long before the reading after that.
    other = [5.0, 5.0, 5.0]
    for t in range(40):
        if t % 10 == 0:
            read()
        ticks(rt, clock, 1)
    doc = rt.site_doc()["overloads"]["circuit:garage"]
    assert doc["events"] == 0 and 1.0 <= doc["longest_s"] < 6.0, doc
