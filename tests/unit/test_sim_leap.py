"""`Engine.leap` changes nothing: a run that leaps over steady stretches is, at every tick it runs, in
the state a run of every tick is in, and the ticks it leapt over signaled what that run signaled.

Sites are drawn from a seed: 1 to 6 chargers (1- and 3-phase, rotations, every mode), cars that
arrive, fill up, stay plugged in or leave, PV, house spikes, a home battery, the simulated or an
API-fed mains meter, and trip-level house load while every socket is idle.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from evpilot.config import AppConfig, parse_config
from evpilot.control.build import Assembly, assemble
from tests.unit.test_fast_paths import busy_site, state_of

START = 1_700_000_000.0
TICKS = 3000


def drawn_site(seed: int) -> dict[str, Any]:
    """A small site drawn from `seed`."""
    rng = random.Random(seed)
    chargers: list[dict[str, Any]] = []
    cars: list[dict[str, Any]] = []
    for i in range(rng.randint(1, 6)):
        cp: dict[str, Any] = {"id": f"cp{i}", "mode": rng.choice([None, "off", "normal", "smart", "solar"])}
        if rng.random() < 0.3:
            cp.update(phases=1, phase=rng.randint(1, 3))
        else:
            cp["phase_rotation"] = rng.choice(["L1L2L3", "L2L3L1", "L3L1L2"])
        chargers.append(cp)
        t = rng.uniform(0, 600)
        for _ in range(rng.randint(0, 2)):
            stay = rng.uniform(200, 1500)
            cars.append(
                {
                    "charger": cp["id"],
                    "at_s": round(t),
                    "unplug_at_s": round(t + stay) if rng.random() < 0.8 else None,
                    "battery_kwh": rng.choice([0.5, 1, 40]),
                    "soc": rng.choice([60, 95, 99]),
                    "phases": 1 if cp.get("phases") == 1 or rng.random() < 0.3 else 3,
                }
            )
            t += stay + rng.uniform(60, 900)
    sim: dict[str, Any] = {
        "seed": seed,
        "pv_kwp": rng.choice([0, 6, 14]),
        "start_tod_h": rng.choice([3, 8, 12, 19]),
        "cars": [{k: v for k, v in c.items() if v is not None} for c in cars],
    }
    if rng.random() < 0.3:
        sim.update(battery_kwh=10, battery_power_w=3000)
    site: dict[str, Any] = {
        "mains_limit": rng.choice([25, 32, 63]),
        "solar": {"start_current": 4, "stop_min": 1},
    }
    if rng.random() < 0.2:
        site["mains_meter"] = "api"
    return {"site": site, "chargers": chargers, "sim": sim}


def disturb(parts: Assembly, now: float) -> None:
    """Trip-level and refused house load for a few seconds (physics: the same in both runs)."""
    k = round(now - START)
    sim = parts.sim
    assert sim is not None
    trip = 2.5 * parts.engine.site.mains_limit
    if 2100 <= k < 2103:
        sim.house.override = (trip, trip, trip)
    elif 2300 <= k < 2302:
        sim.house.override = (3000.0, 1.0, 1.0)
    else:
        sim.house.override = None


def compare(config: AppConfig) -> int:
    """Run `config` tick by tick and leaping; assert they agree; return the ticks leapt over."""
    every = assemble(config, START)
    leaping = assemble(config, START)
    for parts in (every, leaping):
        advance = parts.engine.before_step
        assert advance is not None

        def before(now: float, parts: Assembly = parts, advance: Any = advance) -> None:
            disturb(parts, now)
            advance(now)

        parts.engine.before_step = before
    signaled: list[tuple[float, ...]] = []
    states = []
    allocations = []
    for k in range(1, TICKS + 1):
        a = every.engine.step(START + k)
        signaled.append(tuple(c.signaled for c in every.engine.chargers.values()))
        states.append(copy.deepcopy(state_of(every)))
        allocations.append(a)
    leapt = 0
    k = 1
    while k <= TICKS:
        a = leaping.engine.step(START + k)
        assert a == allocations[k - 1], f"tick {k}"
        assert state_of(leaping) == states[k - 1], f"tick {k}"
        row = tuple(c.signaled for c in leaping.engine.chargers.values())
        j = round(leaping.engine.leap(START + k, START + TICKS) - START)
        if j > k:
            assert signaled[k : j - 1] == [row] * (j - k - 1), f"ticks {k + 1}..{j - 1}"
            assert leaping.engine.last == allocations[j - 1], f"tick {j}"
            assert state_of(leaping) == states[j - 1], f"tick {j}"
            assert leaping.engine.rejected == every.engine.rejected or j < TICKS
            leapt += j - k - 1
            k = j
        k += 1
    assert leaping.engine.rejected == every.engine.rejected
    return leapt


@pytest.mark.parametrize("seed", range(12))
def test_leap_changes_nothing(seed: int) -> None:
    compare(parse_config(drawn_site(seed)))


def test_leaps_happen_on_a_site_with_idle_stretches() -> None:
    """The comparison above is not void: the busy site and the default one leap over most idle ticks."""
    assert compare(parse_config(busy_site())) > 300
    assert compare(AppConfig()) == 0  # its car charges for the whole run
    site = drawn_site(3)
    site["sim"]["cars"] = []
    assert compare(parse_config(site)) > TICKS // 2
