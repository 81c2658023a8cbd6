"""Golden scenarios pin the site engine's behaviour (tests/scenarios/*.yaml)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evpilot.core import sources
from evpilot.core.balancer import compute
from evpilot.core.site import Allocation, ChargerAllocation, Snapshot
from tests.scenario_runner import SCENARIO_DIR, all_scenarios, load, run


def test_there_are_enough_scenarios() -> None:
    assert len(all_scenarios()) >= 45


@pytest.mark.parametrize("path", all_scenarios(), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    failures = run(load(path)).failures
    assert not failures, "\n".join(failures[:20])


def _everyone_at_max(snapshot: Snapshot, now: float) -> Allocation:
    """An allocator that ignores every fuse: what the runner's node checks must catch."""
    out = compute(snapshot, now)
    chargers = {
        ci.config.id: ChargerAllocation(ci.config.max_current, out.chargers[ci.config.id].phases, sources.MAX)
        for ci in snapshot.chargers
    }
    return replace(out, chargers=chargers)


def test_runner_names_an_overloaded_circuit() -> None:
    scenario = load(SCENARIO_DIR / "04_nested_circuits.yaml")
    failures = run(scenario, _everyone_at_max).failures
    overloads = [f for f in failures if " over its limit " in f]
    assert any(f.startswith("circuit:carport L1 over its limit 16 A for ") for f in overloads), failures
    assert any(f.startswith("circuit:garage L2 over its limit 25 A for ") for f in overloads), failures
    assert any(f.startswith("mains L3 over its limit 40 A for ") for f in overloads), failures


def _house_only(house: list[float]) -> dict[str, Any]:
    return {
        "config": {"site": {"mains_limit": 25}, "chargers": [{"id": "cp1"}]},
        "events": [{"at": 0, "house": house}],
        "duration": 30,
    }


def test_runner_does_not_blame_the_house_alone() -> None:
    result = run(_house_only([40, 3, 3]))
    assert not result.failures
    assert not result.overload_events


def test_runner_fails_an_overload_of_exactly_max_overload_s() -> None:
    # A car on a 25 A fuse next to a house that jumps to 30 A: the controller stops the car,
    # which then takes 1-5 s to follow, so the mains is over for a few seconds.
    scenario: dict[str, Any] = {
        "config": {"site": {"mains_limit": 25}, "chargers": [{"id": "cp1"}]},
        "events": [
            {"at": 0, "house": [3, 3, 3]},
            {"at": 0, "plug": {"charger": "cp1", "soc": 20, "phases": 3, "battery_kwh": 80}},
            {"at": 60, "house": [30, 3, 3]},
        ],
        "duration": 120,
    }
    events = [e for e in run(scenario).overload_events if e.node == "mains" and e.phase == 0]
    assert len(events) == 1
    seconds = events[0].duration
    assert events[0].start == 60 and seconds >= 1
    assert not run({**scenario, "max_overload_s": seconds + 1}).failures
    assert run({**scenario, "max_overload_s": seconds}).failures == [events[0].describe()]


def test_a_frozen_charger_meter_keeps_its_old_reading() -> None:
    scenario: dict[str, Any] = {
        "config": {"site": {"mains_limit": 25}, "chargers": [{"id": "cp1"}]},
        "events": [
            {"at": 0, "plug": {"charger": "cp1", "soc": 20, "phases": 3, "battery_kwh": 80}},
            {"at": 3, "charger_meter": {"charger": "cp1", "state": "frozen"}},
            {"at": 15, "charger_meter": {"charger": "cp1", "state": "live"}},
        ],
        "duration": 20,
    }
    seen: list[float] = []

    def spy(snapshot: Snapshot, now: float) -> Allocation:
        seen.append(snapshot.chargers[0].measured[0])
        return compute(snapshot, now)

    run(scenario, spy)
    # The car starts drawing a few seconds after the plug; the frozen meter still says 0 A.
    assert seen[3:15] == [0.0] * 12
    assert min(seen[15:]) > 6.0


@pytest.mark.parametrize("stamp", ["now", "taken"])
def test_a_lagging_circuit_meter_sends_the_chargers_draw_of_lag_s_ago(stamp: str) -> None:
    scenario = load(SCENARIO_DIR / "47_lagging_circuit_meter.yaml")
    scenario["events"][2]["circuit_load"]["stamp"] = stamp
    seen: list[tuple[float, tuple[float, float, float], float, float]] = []

    def watching(snapshot: Snapshot, now: float) -> Allocation:
        reading = snapshot.circuit_meters["hall"]
        assert reading is not None
        draw = sum(ci.measured[0] for ci in snapshot.chargers)
        seen.append((now, reading.currents, reading.taken_at, draw))
        return compute(snapshot, now)

    run({**scenario, "duration": 40}, watching)
    by_t = {round(now): (currents, taken, draw) for now, currents, taken, draw in seen}
    rising = [t for t in sorted(by_t)[3:] if by_t[t][2] != by_t[t - 3][2]]
    assert rising, "the cars' draw never changed"
    for t in rising:
        currents, taken, _ = by_t[t]
        assert currents[0] == pytest.approx(5.0 + by_t[t - 3][2])
        assert taken == (t if stamp == "now" else t - 3)
