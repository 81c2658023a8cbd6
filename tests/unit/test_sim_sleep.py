"""`Engine.run` changes nothing: with settled chargers' pilots asleep (neither read nor written nor
stepped), chargers waiting their turn dozing (in `compute`, their pilots asleep) and steady stretches
leapt over, a run is, after each call, in the state a run of every tick
is in, and every tick signaled what that run signaled.

Sites are those of `test_sim_leap` (drawn from a seed, with trip-level and refused house load) and a
depot where some sockets charge while most stay empty or hold a full car; each is run in chunks of
drawn lengths, so sleeping pilots are woken by a car, by a trip and at the end of a chunk.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from evpilot.config import AppConfig, parse_config
from evpilot.control.build import Assembly, assemble
from evpilot.sim.site import SimSite
from tests.unit.test_fast_paths import busy_site, state_of
from tests.unit.test_sim_leap import START, disturb, drawn_site

TICKS = 3000


def depot(seed: int, mains_limit: float = 40) -> dict[str, Any]:
    """Twelve chargers under a mains that feeds a few: cars come and go, most sockets are quiet."""
    rng = random.Random(seed)
    chargers: list[dict[str, Any]] = []
    cars: list[dict[str, Any]] = []
    for i in range(12):
        cp: dict[str, Any] = {"id": f"cp{i:02d}", "circuit": f"c{i // 4}", "safe_current": 0}
        if i % 4 == 3:
            cp.update(phases=1, phase=i % 3 + 1)
        chargers.append(cp)
        t = rng.uniform(0, 1500)
        for _ in range(rng.randint(0, 2)):
            stay = rng.uniform(300, 1200)
            cars.append(
                {
                    "charger": cp["id"],
                    "at_s": round(t),
                    "unplug_at_s": round(t + stay),
                    "battery_kwh": rng.choice([0.5, 2, 40]),
                    "soc": rng.choice([50, 90, 99]),
                    "phases": 1 if cp.get("phases") == 1 else 3,
                }
            )
            t += stay + rng.uniform(60, 600)
    circuits = [{"name": f"c{g}", "limit": 32} for g in range(3)]
    return {
        "site": {"mains_limit": mains_limit, "circuits": circuits, "fallback_current": 0},
        "chargers": chargers,
        "sim": {"seed": seed, "pv_kwp": 10, "start_tod_h": 11, "cars": cars},
    }


def with_disturbance(parts: Assembly) -> None:
    """Trip-level and refused house load at fixed ticks (`test_sim_leap.disturb`), before each step."""
    advance = parts.engine.before_step
    assert advance is not None

    def before(now: float) -> None:
        disturb(parts, now)
        advance(now)

    parts.engine.before_step = before


def compare(config: AppConfig, seed: int) -> int:
    """Run `config` tick by tick and through `Engine.run` in drawn chunks; assert they agree; return how
    many charger-ticks slept."""
    every = assemble(config, START)
    running = assemble(config, START)
    with_disturbance(every)
    with_disturbance(running)
    signaled: list[tuple[float, ...]] = []
    states = []
    allocations = []
    for k in range(1, TICKS + 1):
        allocations.append(every.engine.step(START + k))
        signaled.append(tuple(c.signaled for c in every.engine.chargers.values()))
        states.append(copy.deepcopy(state_of(every)))
    slept = 0
    seen: list[tuple[float, ...]] = []

    def each(now: float) -> None:
        nonlocal slept
        k = round(now - START)
        assert k == len(seen) + 1
        seen.append(tuple(c.signaled for c in running.engine.chargers.values()))
        slept += len(running.engine._asleep)

    rng = random.Random(seed)
    k = 0
    while k < TICKS:
        end = min(TICKS, k + rng.choice([1, 7, 150, 900]))
        last = round(running.engine.run(START + k, START + end, 1.0, each) - START)
        assert last == end
        assert not running.engine._asleep
        assert signaled[:end] == seen, f"ticks up to {end}"
        assert state_of(running) == states[end - 1], f"tick {end}"
        assert running.engine.state == allocations[end - 1].state, f"tick {end}"
        assert running.engine.rejected == every.engine.rejected or end < TICKS
        k = end
    assert running.engine.rejected == every.engine.rejected
    return slept


@pytest.mark.parametrize("seed", range(8))
def test_run_changes_nothing(seed: int) -> None:
    compare(parse_config(drawn_site(seed)), seed)


@pytest.mark.parametrize(("seed", "mains_limit"), [(0, 40), (1, 40), (2, 40), (3, 40), (1, 25), (2, 25)])
def test_run_changes_nothing_in_a_depot(seed: int, mains_limit: float) -> None:
    assert compare(parse_config(depot(seed, mains_limit)), seed) > 1000


def test_pilots_sleep_and_wake() -> None:
    """The comparisons above are not void: pilots sleep while others charge, and wake for a car."""
    assert compare(parse_config(busy_site()), 3) > 1000
    parts = assemble(parse_config(depot(1, 25)), START)
    sim = parts.sim
    assert isinstance(sim, SimSite)
    stepped: list[int] = []
    dozing: list[int] = []

    def each(now: float) -> None:
        stepped.append(len(sim._awake))
        dozing.append(len(parts.engine._dozing))

    parts.engine.run(START, START + TICKS, 1.0, each)
    # Sleeping pilots are not stepped while others are (not only while every charger is idle).
    assert min(stepped) < len(sim.pilots) and max(stepped) > 0
    assert any(0 < n < len(sim.pilots) for n in stepped)
    # Chargers waiting their turn in `compute` doze (their pilots asleep) for a good part of the run.
    assert sum(dozing) > 300


def test_a_pilot_that_may_not_sleep_stays_awake() -> None:
    """A pilot offering current, with its contactor closed or drawing is never put to sleep, and a
    pilot that is not the site's own is refused."""
    parts = assemble(parse_config(busy_site()), START)
    sim = parts.sim
    assert isinstance(sim, SimSite)
    parts.engine.step(START + 1)
    pilot = sim.pilots["a"]
    assert pilot.may_sleep()
    pilot.duty = 50.0
    assert not pilot.may_sleep() and not sim.sleep(pilot)
    pilot.duty = 100.0
    pilot.contactor = True
    assert not sim.sleep(pilot)
    pilot.contactor = False
    other = assemble(parse_config(busy_site()), START).sim
    assert other is not None
    assert not sim.sleep(other.pilots["a"]) and not sim.sleep(object())
    assert sim.sleep(pilot) and pilot not in sim._awake
    sim.wake(pilot)
    assert pilot in sim._awake and sim.woken() == []
