"""`compute` memoizes what it derives from configs and constraint structure: never a decision.

Each tick of a simulated site is computed twice from the same snapshot: once with the memos left by
earlier ticks and once with every memo cleared. Allocations, memos and site figures must be equal,
through meter dropouts, stale and refused charger readings, shortage pauses and re-admissions,
solar timers, phase switches, and config objects replaced under the same charger id.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from evpilot.config import parse_config
from evpilot.control.build import assemble
from evpilot.core import balancer
from evpilot.core.balancer import compute
from evpilot.core.site import Allocation, Snapshot
from evpilot.core.units import PhaseRotation

START = 1_700_000_000.0


def cold_compute(snapshot: Snapshot, now: float) -> Allocation:
    """`compute` with every memo of the balancer module cleared first."""
    balancer._INFO.clear()
    balancer._SITES.clear()
    balancer._SHAPES.clear()
    balancer._ALLOCS.clear()
    return compute(snapshot, now)


def disturb(snapshot: Snapshot, now: float, k: int) -> Snapshot:
    """Faults injected into the snapshot on some ticks (the same for both computations)."""
    chargers = list(snapshot.chargers)
    if 300 <= k < 340 and chargers:
        # The first charger's own reading stops (stale), then one reading is refused (NaN).
        ci = chargers[0]
        chargers[0] = replace(ci, measured_at=now - 30.0)
    if k == 345 and chargers:
        chargers[0] = replace(chargers[0], measured=(math.nan, 0.0, 0.0))
    if 500 <= k < 520:
        # New config objects with the same ids: a MIN that is not a whole number of amperes, which
        # takes the sorted admission path.
        chargers = [replace(ci, config=replace(ci.config, min_current=6.5)) for ci in chargers]
    if 520 <= k < 540:
        # The same ids on other wiring: 1-phase chargers on the next mains phase, 3-phase ones rotated.
        chargers = [
            replace(ci, config=replace(ci.config, phase=ci.config.phase % 3 + 1))
            if ci.config.phases == 1
            else replace(ci, config=replace(ci.config, phase_rotation=PhaseRotation.L3L1L2))
            for ci in chargers
        ]
    out = replace(snapshot, chargers=tuple(chargers))
    if 600 <= k < 700:
        out = replace(out, battery_current=-8.0, battery_at=now)
    return out


def run_twice(config: dict[str, Any], seconds: int, dropouts: list[tuple[int, int]]) -> int:
    """Run the site, comparing the warm and the cold computation on every tick; returns ticks checked."""
    parts = assemble(parse_config(config), START)
    engine = parts.engine
    checked = 0
    tick = [0]

    def both(snapshot: Snapshot, now: float) -> Allocation:
        nonlocal checked
        snap = disturb(snapshot, now, tick[0])
        warm = compute(snap, now)
        cold = cold_compute(snap, now)
        assert warm == cold, f"tick {tick[0]}"
        checked += 1
        return warm

    engine.compute = both
    meter = parts.sim_meter
    assert meter is not None
    for k in range(1, seconds + 1):
        tick[0] = k
        meter.enabled = not any(a <= k < b for a, b in dropouts)
        engine.step(START + k)
    return checked


def solar_site() -> dict[str, Any]:
    """A solar site with an automatic phase switch, a 1-phase car and a 3-phase one."""
    return {
        "site": {"mains_limit": 25, "mode": "solar", "solar": {"start_current": 6, "stop_min": 1}},
        "chargers": [
            {"id": "a", "contactor2": "auto"},
            {"id": "b", "phase_rotation": "L2L3L1"},
            {"id": "c", "phases": 1, "phase": 3, "safe_current": 0},
        ],
        "sim": {
            "seed": 3,
            "pv_kwp": 12,
            "start_tod_h": 11,
            "cars": [
                {"charger": "a", "phases": 3, "soc": 20},
                {"charger": "b", "phases": 1, "at_s": 100, "soc": 40},
                {"charger": "c", "phases": 1, "at_s": 200, "unplug_at_s": 900},
            ],
        },
    }


def shortage_site() -> dict[str, Any]:
    """Twelve chargers on two metered-free circuits under a mains that feeds only some at MIN."""
    chargers = []
    cars = []
    for i in range(12):
        cid = f"cp{i}"
        one = i % 4 == 3
        cp: dict[str, Any] = {"id": cid, "circuit": f"c{i % 2}", "priority": 1 if i == 0 else 0}
        cp.update({"phases": 1, "phase": i % 3 + 1} if one else {})
        chargers.append({**cp, "safe_current": 0})
        cars.append({"charger": cid, "at_s": 5 * i, "unplug_at_s": 400 + 37 * i, "phases": 1 if one else 3})
    return {
        "site": {
            "mains_limit": 40,
            "fallback_current": 0,
            "circuits": [{"name": "c0", "limit": 25}, {"name": "c1", "limit": 25}],
        },
        "chargers": chargers,
        "sim": {"seed": 5, "pv_kwp": 0, "cars": cars},
    }


@pytest.mark.parametrize("site", [solar_site, shortage_site], ids=["solar", "shortage"])
def test_memoized_compute_decides_as_a_fresh_one(site: Any) -> None:
    checked = run_twice(site(), 1000, dropouts=[(150, 175), (410, 412)])
    assert checked == 1000


def test_shortage_site_pauses_and_readmits() -> None:
    """The shortage site really exercises pauses and re-admission (else the test above proves little)."""
    parts = assemble(parse_config(shortage_site()), START)
    engine = parts.engine
    paused: set[str] = set()
    readmitted: set[str] = set()
    for k in range(1, 1000):
        alloc = engine.step(START + k)
        for cid, a in alloc.chargers.items():
            if a.source.text == "shortage":
                paused.add(cid)
            elif cid in paused and a.current > 0:
                readmitted.add(cid)
    assert len(paused) >= 3
    assert readmitted
