"""The steady-state shortcuts of `compute` and the simulator change nothing: tick by tick, a site run
with them and a site run with them switched off hold equal allocations, memos, chargers and physics.

The site goes through idle stretches (empty sockets, a full car left plugged in), plug-ins and
unplugs, charging with ramps, solar mode, an automatic phase switch, a mains meter dropout, an RCM
fault, an over-temperature charger and a trip-level mains reading.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from evpilot.config import parse_config
from evpilot.control import engine as engine_mod
from evpilot.control.build import Assembly, assemble
from evpilot.core import balancer
from evpilot.sim import site as sim_site

START = 1_700_000_000.0


@contextmanager
def plain() -> Iterator[None]:
    """Switch the shortcuts off (the full path runs on every tick)."""
    balancer.FAST_PATHS = False
    sim_site.FAST_PATHS = False
    engine_mod.FAST_PATHS = False
    try:
        yield
    finally:
        balancer.FAST_PATHS = True
        sim_site.FAST_PATHS = True
        engine_mod.FAST_PATHS = True


def busy_site() -> dict[str, Any]:
    """Four chargers whose cars come, fill up, stay plugged in or leave, in three modes."""
    return {
        "site": {"mains_limit": 32, "solar": {"start_current": 4, "stop_min": 1}},
        "chargers": [
            {"id": "a"},
            {"id": "b", "contactor2": "auto"},
            {"id": "c", "phases": 1, "phase": 2, "mode": "solar"},
            {"id": "d", "phase_rotation": "L3L1L2", "mode": "normal"},
        ],
        "sim": {
            "seed": 11,
            "pv_kwp": 14,
            "first_spike_s": None,
            "start_tod_h": 12,
            "cars": [
                # Nearly full: charges briefly, then stays plugged in, idle (B), until it leaves.
                {"charger": "a", "at_s": 30, "unplug_at_s": 1500, "battery_kwh": 1, "soc": 97},
                {"charger": "a", "at_s": 2200, "battery_kwh": 2, "soc": 95},
                # Leaves before the solar car, which then stops while every other socket is idle.
                {"charger": "b", "at_s": 400, "unplug_at_s": 1950, "phases": 3, "soc": 40},
                {"charger": "c", "at_s": 900, "unplug_at_s": 2000, "phases": 1, "soc": 50},
                {"charger": "d", "at_s": 1200, "unplug_at_s": 1900, "battery_kwh": 1, "soc": 98},
            ],
        },
    }


def disturb(parts: Assembly, k: int) -> None:
    """Faults injected on some ticks (the same in both runs)."""
    sim = parts.sim
    meter = parts.sim_meter
    assert sim is not None and meter is not None
    # The mains meter drops out while cars charge, and while every socket is idle (stale, then back).
    meter.enabled = not (700 <= k < 730 or 2020 <= k < 2040)
    sim.pilots["a"].rcm_fault = 1000 <= k < 1010
    # The car counting down to a phase switch faults: its timer must be cleared on an idle site.
    sim.pilots["b"].rcm_fault = 515 <= k < 517
    if k == 520:
        parts.engine.chargers["b"].reset_faults()
    if k == 1100:
        sim.pilots["b"].temperature = 80.0
    # Trip-level mains readings while cars charge, and while every socket is idle.
    if 1300 <= k < 1303:
        sim.house.override = (70.0, 70.0, 70.0)
    elif 2100 <= k < 2103:
        sim.house.override = (85.0, 85.0, 85.0)
    elif 2150 <= k < 2152:
        # A reading the core refuses (beyond 1000 A) on an idle site.
        sim.house.override = (2000.0, 1.0, 1.0)
    else:
        sim.house.override = None
    if k == 2400:
        parts.engine.chargers["a"].reset_faults()
    # A zero lease on the car that wants current, while the others are idle: its automatic phase
    # switch still counts down (no shortcut may skip it).
    if k == 500:
        parts.engine.chargers["b"].set_lease("ocpp", 0.0, None)
    if k == 600:
        parts.engine.chargers["b"].set_lease("ocpp", None, None)


def state_of(parts: Assembly) -> tuple[Any, ...]:
    """Everything a shortcut could get wrong: chargers, pilots, cars, the site's physics."""
    sim = parts.sim
    assert sim is not None
    pilots = tuple(
        (
            p.currents,
            p.voltages,
            p.energy_kwh,
            p.temperature,
            p.duty,
            p.contactor,
            p.phases,
            None if p.car is None else (p.car.soc, p.car.follow, p.car.last_offer),
        )
        for p in sim.pilots.values()
    )
    physics = (sim.mains_currents, sim.phase_v, sim.import_kwh, sim.export_kwh, sim.house_currents)
    return tuple(parts.engine.chargers.values()), pilots, physics


def test_shortcuts_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = assemble(parse_config(busy_site()), START)
    slow = assemble(parse_config(busy_site()), START)
    idle_ticks = []
    real_idle = balancer._idle_allocation

    def counting(*args: Any) -> Any:
        idle_ticks.append(1)
        return real_idle(*args)

    monkeypatch.setattr(balancer, "_idle_allocation", counting)
    # Ticks that left settled chargers out of `compute`: some of them (merged back) or all of them.
    merged: list[int] = []
    all_out: list[int] = []
    real_merge = engine_mod.merge
    real_all_out = engine_mod.idle_allocation

    def counting_merge(*args: Any) -> Any:
        merged.append(1)
        return real_merge(*args)

    def counting_all_out(*args: Any) -> Any:
        all_out.append(1)
        return real_all_out(*args)

    monkeypatch.setattr(engine_mod, "merge", counting_merge)
    monkeypatch.setattr(engine_mod, "idle_allocation", counting_all_out)
    sources: set[str] = set()
    for k in range(1, 3000):
        now = START + k
        disturb(fast, k)
        disturb(slow, k)
        a = fast.engine.step(now)
        with plain():
            b = slow.engine.step(now)
        assert a == b, f"tick {k}"
        assert state_of(fast) == state_of(slow), f"tick {k}"
        sources.update(x.source.text for x in a.chargers.values())
        sources.update(a.rejected)
    # The run took the shortcuts often (the idle path of `compute`, settled chargers left out of it
    # while others charge, all of them left out) and went through what it must not disturb.
    assert len(idle_ticks) > 20 and len(merged) > 200 and len(all_out) > 200
    assert {"idle", "fallback", "trip", "temperature", "solar", "ocpp", "phase_switch", "ramp"} <= sources
    assert "mains" in sources


def test_plain_path_takes_no_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the switch off the idle shortcut is never called (else the comparison above is void)."""
    parts = assemble(parse_config(busy_site()), START)

    def fail(*args: Any) -> Any:
        raise AssertionError("idle shortcut taken")

    monkeypatch.setattr(balancer, "_idle_allocation", fail)
    monkeypatch.setattr(engine_mod, "merge", fail)
    monkeypatch.setattr(engine_mod, "idle_allocation", fail)
    with plain():
        for k in range(1, 60):
            parts.engine.step(START + k)
