"""Day-long site benchmark: six simulated sites, evpilot against two baselines and an LP optimum.

Each scenario is an evpilot config (parsed with `parse_config`) built with `control.build.assemble`
and run with `Engine.step` at 1 s steps on the simulator. The same day (house load, appliance
spikes, PV with clouds, cars arriving and leaving) is run three times: with evpilot's `compute`,
with a static split (each charger fixed at limit/N) and with a slow controller (one charger
adjusted per 30 s tick). The perfect-foresight optimum is a linear program (scipy, HiGHS) over the
same day, and a MIN-aware bound (a MILP: each charger 0 or at least MIN) is the reference for the
energy goal. Run `python bench/day_scenarios.py --help`; see bench/README.md for the metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from day_baselines import SlowController, StaticSplit
from day_lp import CarSession, LpResult, jain_pair_ratio, optimum
from day_metrics import EVENT_GOAL_S, LONG_EVENT_S, Recorder, RunResult
from evpilot.config import AppConfig, parse_config
from evpilot.control.build import assemble
from evpilot.sim.house import Spike

START = 1_700_000_000.0
CONTROLLERS = ("evpilot", "static", "slow")
# The goals: energy against the MIN-aware bound, Jain's index (mean) in the scenarios where
# chargers compete, phase switches per charger and day, and no overload event this long or longer.
ENERGY_GOAL = 0.98
JAIN_GOAL = 0.99
SWITCH_GOAL = 4
JAIN_SCENARIOS = (2, 3, 4, 6)


@dataclass(frozen=True, slots=True)
class Visit:
    """A car at a charger from `arrive_h` to `leave_h` (hours of the simulated day)."""

    charger: str
    arrive_h: float
    leave_h: float
    battery_kwh: float = 60.0
    soc: float = 30.0
    max_current: float = 32.0
    phases: int = 3
    target_soc: float = 100.0


@dataclass(frozen=True, slots=True)
class Load:
    """A fixed extra house load (e.g. a heat pump cycle) from `from_h` to `to_h`, A per phase."""

    from_h: float
    to_h: float
    currents: tuple[float, float, float]
    name: str = "heat pump"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated site and day."""

    number: int
    title: str
    site: dict[str, Any]
    chargers: list[dict[str, Any]]
    sim: dict[str, Any]
    visits: list[Visit]
    loads: list[Load] = field(default_factory=list)
    lp_step_s: float = 60.0
    # also solve the MIN-aware bound with every window fair (Jain >= JAIN_GOAL between two chargers)
    fair_bound: bool = False

    def clipped(self, from_h: float, hours: float) -> list[tuple[Visit, float, float]]:
        """Visits inside the run, with plug and unplug times in seconds from its start."""
        end = from_h + hours
        out = []
        for v in self.visits:
            if v.leave_h <= from_h or v.arrive_h >= end:
                continue
            out.append((v, max(0.0, (v.arrive_h - from_h) * 3600), (min(v.leave_h, end) - from_h) * 3600))
        return out

    def config(self, from_h: float, hours: float) -> AppConfig:
        """The evpilot config of this scenario for a run of `hours` from `from_h`."""
        end = from_h + hours
        cars = []
        for v, at, unplug in self.clipped(from_h, hours):
            cars.append(
                {
                    "charger": v.charger,
                    "at_s": at,
                    "unplug_at_s": unplug if v.leave_h < end else None,
                    "battery_kwh": v.battery_kwh,
                    "soc": v.soc,
                    "target_soc": v.target_soc,
                    "max_current": v.max_current,
                    "phases": v.phases,
                }
            )
        sim = {**self.sim, "start_tod_h": from_h, "first_spike_s": None, "cars": cars}
        return parse_config({"site": self.site, "chargers": self.chargers, "sim": sim})

    def sessions(self, from_h: float, hours: float) -> list[CarSession]:
        """The car sessions for the LP."""
        return [
            CarSession(v.charger, at, unplug, v.battery_kwh, v.soc, v.target_soc, v.max_current, v.phases)
            for v, at, unplug in self.clipped(from_h, hours)
        ]

    def spikes(self, from_h: float, hours: float) -> list[Spike]:
        """The extra loads as simulator spikes."""
        out = []
        end = from_h + hours
        for load in self.loads:
            a, b = max(load.from_h, from_h), min(load.to_h, end)
            if b > a:
                out.append(Spike(START + (a - from_h) * 3600, (b - a) * 3600, load.currents, load.name))
        return out


# ---- the six scenarios ------------------------------------------------------------------------


def _cycling(currents: tuple[float, float, float], on_min: float, off_min: float) -> list[Load]:
    """A load cycling on/off all day, like a heat pump's compressor."""
    out = []
    t = 0.0
    while t < 24:
        out.append(Load(t, min(24.0, t + on_min / 60), currents))
        t += (on_min + off_min) / 60
    return out


def s1_home() -> Scenario:
    """Home, 1 charger, 25 A mains, PV 8 kWp, house spikes."""
    return Scenario(
        1,
        "home: 1 charger, 3x25 A, PV 8 kWp, spikes",
        {"mains_limit": 25, "mode": "smart", "fallback_current": 6},
        [{"id": "cp1", "max_current": 32, "safe_current": 6}],
        {"seed": 11, "pv_kwp": 8, "house_base": [2.0, 1.5, 1.8], "spike_rate_h": 1.0},
        [
            Visit("cp1", 0.0, 3.5, 77, 10, 32),
            Visit("cp1", 12.5, 24.0, 77, 20, 16),
        ],
    )


def s2_two_and_heat_pump() -> Scenario:
    """Two chargers and a heat pump on 3x25 A."""
    return Scenario(
        2,
        "two chargers + heat pump, 3x25 A",
        {"mains_limit": 25, "mode": "smart", "fallback_current": 6},
        [
            {"id": "cp1", "max_current": 32, "safe_current": 6},
            {"id": "cp2", "max_current": 32, "safe_current": 6},
        ],
        {"seed": 22, "pv_kwp": 5, "house_base": [2.0, 1.5, 1.8], "spike_rate_h": 1.0},
        [
            Visit("cp1", 0.0, 6.5, 77, 30, 32),
            Visit("cp2", 0.0, 7.5, 60, 40, 16),
            Visit("cp1", 17.5, 24.0, 60, 25, 32),
            Visit("cp2", 18.0, 24.0, 40, 20, 32, phases=1),
        ],
        _cycling((6.0, 6.0, 6.0), 25, 15),
        fair_bound=True,
    )


def s3_eight_shared() -> Scenario:
    """8 chargers power-sharing a 3x63 A supply (office by day, residents at night)."""
    rng = random.Random(33)
    # 7 chargers on each phase: 6 A each in fallback or without a lease stays within 63 A
    chargers: list[dict[str, Any]] = [
        {"id": f"cp{i}", "max_current": 32, "safe_current": 6} for i in range(1, 7)
    ]
    chargers += [
        {"id": "cp7", "max_current": 32, "phases": 1, "phase": 2, "safe_current": 6},
        {"id": "cp8", "max_current": 32, "phases": 1, "phase": 3, "safe_current": 6},
    ]
    visits = []
    for i in range(1, 6):
        arrive = 7.5 + rng.uniform(0, 1.5)
        visits.append(
            Visit(f"cp{i}", arrive, 16.5 + rng.uniform(0, 1.5), rng.choice([60, 77]), rng.uniform(20, 50))
        )
    for i in (1, 2, 6, 7, 8):
        one = i in (7, 8)
        visits.append(
            Visit(f"cp{i}", 0.0, 6.5 + rng.uniform(0, 1), 60, rng.uniform(40, 70), 32, 1 if one else 3)
        )
        visits.append(
            Visit(f"cp{i}", 18 + rng.uniform(0, 2), 24.0, rng.choice([40, 77]), rng.uniform(15, 40), 32,
                  1 if one else 3)
        )  # fmt: skip
    return Scenario(
        3,
        "8 chargers sharing 3x63 A, PV 20 kWp",
        {"mains_limit": 63, "mode": "smart", "fallback_current": 6},
        chargers,
        {"seed": 33, "pv_kwp": 20, "house_base": [10.0, 8.0, 12.0], "spike_rate_h": 3.0},
        visits,
    )


def s4_depot() -> Scenario:
    """50 chargers behind nested circuits at a depot (halls → rows)."""
    rng = random.Random(44)
    circuits: list[dict[str, Any]] = [
        {"name": "hall-a", "limit": 125},
        {"name": "hall-b", "limit": 125},
    ]
    rows = ["a1", "a2", "a3", "b1", "b2", "b3"]
    circuits += [{"name": r, "limit": 63, "parent": f"hall-{r[0]}"} for r in rows]
    chargers: list[dict[str, Any]] = []
    visits: list[Visit] = []
    one_count = 0
    for i in range(50):
        cid = f"cp{i:02d}"
        one = i % 5 in (1, 2, 3)
        # 6 A each without a lease or a fresh meter: 30 per mains phase x 6 A fit the 200 A (and the rows)
        ch: dict[str, Any] = {"id": cid, "circuit": rows[i % 6], "max_current": 32, "safe_current": 6}
        if one:
            ch.update(phases=1, phase=one_count % 3 + 1)
            one_count += 1
        chargers.append(ch)
        phases = 1 if one else 3
        max_a = 32 if one else rng.choice([16, 32])
        kwh = rng.choice([40, 60, 77, 100])
        # the van that came in last night, then the next evening's van
        visits.append(Visit(cid, 0.0, rng.uniform(5, 7), kwh, rng.uniform(30, 60), max_a, phases))
        visits.append(Visit(cid, rng.uniform(17, 20), 24.0, kwh, rng.uniform(10, 40), max_a, phases))
        if i % 5 == 0:
            visits.append(
                Visit(cid, rng.uniform(8, 10), rng.uniform(14, 16), 60, rng.uniform(20, 50), max_a, 3)
            )
    return Scenario(
        4,
        "depot: 50 chargers, 200 A > 2x125 A halls > 6x63 A rows, PV 60 kWp",
        {"mains_limit": 200, "mode": "smart", "circuits": circuits, "fallback_current": 6},
        chargers,
        {"seed": 44, "pv_kwp": 60, "house_base": [15.0, 12.0, 18.0], "spike_rate_h": 2.0},
        visits,
        lp_step_s=300.0,
    )


def s5_capacity() -> Scenario:
    """Capacity-tariff home: the sum of the three phases stays within 40 A."""
    return Scenario(
        5,
        "capacity-tariff home: sum of phases <= 40 A, 3x25 A, PV 6 kWp",
        {"mains_limit": 25, "capacity_limit": 40, "cap_stop_min": 0, "mode": "smart", "fallback_current": 6},
        [{"id": "cp1", "max_current": 32, "safe_current": 6}],
        {"seed": 55, "pv_kwp": 6, "house_base": [2.0, 1.5, 1.8], "spike_rate_h": 1.5},
        [
            Visit("cp1", 0.0, 7.0, 77, 20, 32),
            Visit("cp1", 17.0, 24.0, 60, 30, 32),
        ],
    )


def s6_solar() -> Scenario:
    """Solar day: a 1/3-phase switching charger (auto) and a 1-phase car, both in solar mode."""
    return Scenario(
        6,
        "solar day: 1/3-phase auto charger + 1-phase car, PV 10 kWp",
        {
            "mains_limit": 25,
            "mode": "solar",
            "fallback_current": 6,
            "solar": {"start_current": 6, "stop_min": 10, "max_import": 0, "start_grace_s": 40},
        },
        [
            {"id": "cp1", "max_current": 32, "contactor2": "auto", "safe_current": 6},
            {"id": "cp2", "max_current": 32, "safe_current": 6},
        ],
        {"seed": 66, "pv_kwp": 10, "house_base": [1.5, 1.0, 1.2], "spike_rate_h": 0.5},
        [
            Visit("cp1", 8.0, 18.0, 60, 30, 32),
            Visit("cp2", 9.0, 17.0, 40, 40, 16, phases=1),
        ],
    )


SCENARIOS: dict[int, Callable[[], Scenario]] = {
    1: s1_home,
    2: s2_two_and_heat_pump,
    3: s3_eight_shared,
    4: s4_depot,
    5: s5_capacity,
    6: s6_solar,
}


# ---- running ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One run: a scenario with one controller."""

    scenario: int
    controller: str
    from_h: float
    hours: float
    lp_step_s: float | None
    progress_h: float


def run(job: Job) -> RunResult:
    """Simulate one scenario with one controller at 1 s steps and measure it."""
    sc = SCENARIOS[job.scenario]()
    config = sc.config(job.from_h, job.hours)
    parts = assemble(config, START)
    engine, sim = parts.engine, parts.sim
    assert sim is not None
    sim.house.spikes.extend(sc.spikes(job.from_h, job.hours))
    if job.controller == "static":
        engine.compute = StaticSplit(engine.site, [c.config for c in engine.chargers.values()])
    elif job.controller == "slow":
        engine.compute = SlowController(engine.site)
    seconds = round(job.hours * 3600)
    result = RunResult(job.controller, seconds, period_s=job.lp_step_s or sc.lp_step_s)
    rec = Recorder(config, engine, sim, START, result)
    step, sample = engine.step, rec.sample
    t0 = time.perf_counter()
    every = max(1, round(job.progress_h * 3600))
    for k in range(1, seconds + 1):
        now = START + k
        step(now)
        sample(now)
        if k % every == 0 and k < seconds:
            print(
                f"  [S{job.scenario} {job.controller:7}] {k / 3600:5.1f}/{job.hours:g} h simulated, "
                f"{time.perf_counter() - t0:6.1f} s wall",
                flush=True,
            )
    result.wall_s = time.perf_counter() - t0
    return rec.finish()


@dataclass(slots=True)
class ScenarioReport:
    """A scenario's runs, its LP optima and its MIN-aware bound."""

    scenario: Scenario
    runs: dict[str, RunResult]
    lp_energy: LpResult | None
    lp_pv: LpResult | None
    milp: LpResult | None = None
    milp_error: str | None = None
    fair: LpResult | None = None


def _coarsen(series: Sequence[tuple[float, ...]], factor: int) -> list[tuple[float, ...]]:
    """Averages of `factor` consecutive periods (the last group may be shorter)."""
    out = []
    for k in range(0, len(series), factor):
        group = series[k : k + factor]
        out.append(tuple(sum(col) / len(group) for col in zip(*group, strict=True)))
    return out


def solve_lp(
    sc: Scenario,
    runs: dict[str, RunResult],
    from_h: float,
    hours: float,
    milp_step_s: float | None = None,
    time_limit: float = 180.0,
    milp: bool = True,
    log: bool = False,
) -> tuple[LpResult, LpResult, LpResult | None, str | None]:
    """The optima (energy, PV self-consumption) and the MIN-aware bound over the series the runs saw."""
    ref = runs.get("evpilot") or next(iter(runs.values()))
    for r in runs.values():
        if abs(r.house_sum - ref.house_sum) > 1e-6 * max(1.0, abs(ref.house_sum)):
            raise RuntimeError(f"S{sc.number}: runs saw different house loads; the day is not reproducible")
    config = sc.config(from_h, hours)
    sessions = sc.sessions(from_h, hours)
    starts = dict(ref.starts)
    args = (config, sessions, ref.house, ref.pv_a, ref.volts, ref.period_s, ref.seconds)
    lp_e = optimum(*args, objective="energy", solar_starts=starts)
    lp_pv = optimum(*args, objective="pv", solar_starts=starts)
    if not milp:
        return lp_e, lp_pv, None, "skipped (--no-milp)"
    factor = max(1, round((milp_step_s or ref.period_s) / ref.period_s))
    house, pv, volts = ref.house, ref.pv_a, ref.volts
    if factor > 1:
        house = [(h[0], h[1], h[2]) for h in _coarsen(house, factor)]
        pv = [p[0] for p in _coarsen([(p,) for p in pv], factor)]
        volts = [(v[0], v[1], v[2]) for v in _coarsen(volts, factor)]
    try:
        bound = optimum(
            config, sessions, house, pv, volts, ref.period_s * factor, ref.seconds, "energy",
            min_aware=True, time_limit=time_limit, solar_starts=starts, log=log,
        )  # fmt: skip
    except Exception as exc:  # the bound is optional: say why it is missing
        return lp_e, lp_pv, None, f"could not run: {type(exc).__name__}: {exc}"
    if math.isnan(bound.value) or not math.isfinite(bound.value):
        return lp_e, lp_pv, None, f"no bound: {bound.status}"
    return lp_e, lp_pv, bound, None


def solve_fair(
    sc: Scenario, runs: dict[str, RunResult], from_h: float, hours: float, time_limit: float, log: bool
) -> LpResult:
    """The MIN-aware bound with every 15-min window fair between two competing cars (Jain >= goal)."""
    ref = runs.get("evpilot") or next(iter(runs.values()))
    args = (sc.config(from_h, hours), sc.sessions(from_h, hours), ref.house, ref.pv_a, ref.volts)
    return optimum(
        *args, ref.period_s, ref.seconds, "energy", min_aware=True, time_limit=time_limit,
        solar_starts=dict(ref.starts), log=log, fair_ratio=jain_pair_ratio(JAIN_GOAL),
    )  # fmt: skip


# ---- printing -----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f} %"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(b) or b <= 1e-9:
        return None
    return a / b


def _jain(r: RunResult) -> str:
    if not r.jain:
        return "- (no contention)"
    return f"{sum(r.jain) / len(r.jain):.3f} / {min(r.jain):.3f} [{len(r.jain)}]"


def _per_day(count: int, r: RunResult) -> float:
    return count * 86400.0 / max(1, r.seconds)


def rows_for(rep: ScenarioReport) -> list[tuple[str, list[str]]]:
    """The table rows: label and one cell per controller."""
    lp_e = rep.lp_energy.value if rep.lp_energy else None
    lp_pv = rep.lp_pv.value if rep.lp_pv else None
    bound = rep.milp.value if rep.milp else None
    runs = list(rep.runs.values())
    h = runs[0].seconds / 3600.0
    rows: list[tuple[str, list[str]]] = [
        ("energy to cars (kWh)", [f"{r.delivered_kwh:.1f}" for r in runs]),
        ("  / MIN-aware bound", [_pct(_ratio(r.delivered_kwh, bound)) for r in runs]),
        *(
            [("  / fair MIN-aware bound", [_pct(_ratio(r.delivered_kwh, rep.fair.value)) for r in runs])]
            if rep.fair is not None
            else []
        ),
        ("  / LP optimum", [_pct(_ratio(r.delivered_kwh, lp_e)) for r in runs]),
        ("PV self-consumption", [_pct(r.self_consumption) for r in runs]),
        ("  / LP optimum", [_pct(_ratio(r.self_consumption, lp_pv)) for r in runs]),
        ("grid import (kWh)", [f"{r.import_kwh:.1f}" for r in runs]),
        ("over limit (s, by EVs)", [f"{r.over_s}" for r in runs]),
        ("over limit (A*s)", [f"{r.over_as:.0f}" for r in runs]),
        ("longest event (s)", [f"{r.longest_s}" for r in runs]),
        (f"events >= {LONG_EVENT_S} s", [f"{r.long_events}" for r in runs]),
        (f"events >= {EVENT_GOAL_S} s", [f"{r.events_at_least(EVENT_GOAL_S)}" for r in runs]),
        ("Jain mean/min [windows]", [_jain(r) for r in runs]),
        ("starts /ch/day (max)", [f"{max(_per_day(v, r) for v in r.starts.values()):.0f}" for r in runs]),
        ("stops /ch/day (max)", [f"{max(_per_day(v, r) for v in r.stops.values()):.0f}" for r in runs]),
        ("phase sw /ch/day (max)", [f"{max(_per_day(v, r) for v in r.switches.values()):.0f}" for r in runs]),
        ("PWM changes /ch/h (max)", [f"{max(v / h for v in r.pwm_changes.values()):.1f}" for r in runs]),
        ("PWM reversals /ch/h (max)", [f"{max(v / h for v in r.reversals.values()):.1f}" for r in runs]),
        ("  of them >= 1 A", [f"{max(v / h for v in r.big_reversals.values()):.1f}" for r in runs]),
        ("wall time (s)", [f"{r.wall_s:.1f}" for r in runs]),
    ]
    return rows


@dataclass(frozen=True, slots=True)
class GoalRow:
    """One of the issue's goals in one scenario: the figure, the goal and whether it is met."""

    scenario: int
    figure: str
    value: str
    goal: str
    met: bool | None  # None: not measurable in this run


def goal_rows(rep: ScenarioReport) -> list[GoalRow]:
    """evpilot's figures against the issue's goals in this scenario."""
    r = rep.runs.get("evpilot")
    n = rep.scenario.number
    if r is None:
        return []
    out = []
    e = _ratio(r.delivered_kwh, rep.milp.value if rep.milp else None)
    value = "-" if e is None else f"{100 * e:.1f} %"
    if rep.milp is not None and not rep.milp.optimal:
        # the MILP's optimum lies between its best schedule and the bound: so does the true ratio
        best = _ratio(r.delivered_kwh, rep.milp.incumbent)
        of_best = "" if best is None else f", {_pct(best)} of best"
        value += f" (MIP gap {100 * rep.milp.gap:.2f} %{of_best})"
    goal = f">= {100 * ENERGY_GOAL:.0f} %"
    out.append(GoalRow(n, "energy / MIN-aware bound", value, goal, None if e is None else e >= ENERGY_GOAL))
    if n in JAIN_SCENARIOS:
        mean = sum(r.jain) / len(r.jain) if r.jain else None
        text = "- (no contention)" if mean is None else f"{mean:.3f}"
        met = None if mean is None else mean >= JAIN_GOAL
        out.append(GoalRow(n, "Jain mean", text, f">= {JAIN_GOAL}", met))
    sw = max((_per_day(v, r) for v in r.switches.values()), default=0.0)
    met = sw <= SWITCH_GOAL + 1e-9
    out.append(GoalRow(n, "phase switches /ch/day (max)", f"{sw:.0f}", f"<= {SWITCH_GOAL}", met))
    count = r.events_at_least(EVENT_GOAL_S)
    text = f"{count} (longest {r.longest_s} s)"
    out.append(GoalRow(n, f"overload events >= {EVENT_GOAL_S} s", text, "0", count == 0))
    return out


def goal_misses(rep: ScenarioReport) -> list[str]:
    """Which of the issue's goals evpilot misses in this scenario."""
    return [f"{g.figure} {g.value} (goal {g.goal})" for g in goal_rows(rep) if g.met is False]


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT MET")


def print_goals(reports: Sequence[ScenarioReport]) -> None:
    """One table of every scenario's goals: figure, goal, met or not."""
    rows = [g for rep in reports for g in goal_rows(rep)]
    if not rows:
        return
    print("\nevpilot against the issue's goals")
    print(f"   {'':4}{'figure':32}{'value':>48}{'goal':>10}  met")
    for g in rows:
        print(f"   S{g.scenario:<3}{g.figure:32}{g.value:>48}{g.goal:>10}  {_met(g.met)}")
    missed = sum(1 for g in rows if g.met is False)
    print(f"   {len(rows) - missed} of {len(rows)} goals met" + (f", {missed} not met" if missed else ""))


def _tod(rep: ScenarioReport, s: int, from_h: float) -> str:
    t = (from_h * 3600 + s) % 86400
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d}"


def print_report(rep: ScenarioReport, from_h: float) -> None:
    """Print one scenario's block: the side-by-side table and evpilot's details."""
    sc = rep.scenario
    runs = list(rep.runs.values())
    h = runs[0].seconds / 3600.0
    print()
    print(f"S{sc.number} {sc.title}  ({h:g} h from {from_h:02g}:00, {len(sc.chargers)} chargers)")
    if rep.lp_energy is not None and rep.lp_pv is not None:
        print(
            f"   LP optimum ({runs[0].period_s:g} s periods, {rep.lp_energy.variables} vars): "
            f"energy {rep.lp_energy.value:.1f} kWh, PV self-consumption {_pct(rep.lp_pv.value)}  "
            f"[{rep.lp_energy.solve_s + rep.lp_pv.solve_s:.1f} s]"
        )
    if rep.milp is not None:
        m = rep.milp
        state = f"optimal, MIP gap {100 * m.gap:.2f} %"
        if not m.optimal:
            state = f"MILP not proven optimal, MIP gap {100 * m.gap:.2f} %, best bound used"
        found = "" if math.isnan(m.incumbent) else f", best MIN-respecting schedule {m.incumbent:.1f} kWh"
        print(
            f"   MIN-aware bound (MILP, {m.integers} binaries): energy {m.value:.1f} kWh ({state}{found})  "
            f"[{m.solve_s:.1f} s]"
        )
    elif rep.milp_error is not None:
        print(f"   MIN-aware bound (MILP): {rep.milp_error}")
    if rep.fair is not None:
        f = rep.fair
        state = "optimal" if f.optimal else f"not proven optimal, MIP gap {100 * f.gap:.1f} %"
        print(
            f"   MIN-aware bound with every window fair (Jain >= {JAIN_GOAL} between two cars): "
            f"{f.value:.1f} kWh ({state}; best schedule {f.incumbent:.1f} kWh)  [{f.solve_s:.1f} s]"
        )
    names = [r.controller for r in runs]
    print(f"   {'':26}" + "".join(f"{n:>22}" for n in names))
    for label, cells in rows_for(rep):
        print(f"   {label:26}" + "".join(f"{c:>22}" for c in cells))
    r = rep.runs.get("evpilot")
    if r is None:
        return
    worst = sorted(r.events, key=lambda e: (-e.duration_s, -e.peak_a))[:3]
    if worst:
        text = ", ".join(
            f"{e.key} at {_tod(rep, e.start_s, from_h)} {e.duration_s} s (+{e.peak_a:.1f} A)" for e in worst
        )
        print(f"   evpilot longest overloads: {text}")
    shares: dict[str, int] = {}
    for per in r.sources.values():
        for src, n in per.items():
            shares[src] = shares.get(src, 0) + n
    total = sum(shares.values())
    if total:
        top = sorted(shares.items(), key=lambda kv: -kv[1])[:6]
        print(
            "   evpilot binding source while a car wanted charge: "
            + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in top)
        )
    for j, start, means in r.unfair[:3]:
        text = ", ".join(f"{k} {v} A" for k, v in means.items())
        print(f"   evpilot unfair window at {_tod(rep, start, from_h)} (15 min): Jain {j:.3f}: mean {text}")
    if r.house_only_over_s:
        print(f"   (house alone above the mains limit for {r.house_only_over_s} s: not counted against EVs)")
    misses = goal_misses(rep)
    print("   evpilot goals: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)))


def _hourly(bound: LpResult, seconds: int) -> dict[str, list[float]]:
    """The bound's schedule as kWh per charger and hour of the run (periods split at the hours)."""
    hours = math.ceil(seconds / 3600)
    out: dict[str, list[float]] = {}
    step = bound.period_s
    for cid, row in bound.per_period_kwh.items():
        acc = out[cid] = [0.0] * hours
        for k, kwh in enumerate(row):
            lo, hi = k * step, min((k + 1) * step, seconds)
            if hi <= lo:
                continue
            h = int(lo // 3600)
            span = hi - lo
            while lo < hi and h < hours:
                cut = min(hi, (h + 1) * 3600.0)
                acc[h] += kwh * (cut - lo) / span
                lo, h = cut, h + 1
    return out


def print_breakdown(rep: ScenarioReport, from_h: float, top: int = 12) -> None:
    """evpilot's energy against the MIN-aware bound's best schedule per charger, circuit and hour."""
    r = rep.runs.get("evpilot")
    bound = rep.milp or rep.lp_energy
    if r is None or bound is None or not bound.per_period_kwh:
        print("   breakdown: needs the evpilot run and a bound's schedule")
        return
    what = "MIN-aware bound's best schedule" if rep.milp is not None else "LP optimum"
    ref = _hourly(bound, r.seconds)
    sc = rep.scenario
    need: dict[str, float] = {}
    for s in sc.sessions(from_h, r.seconds / 3600):
        need[s.charger] = need.get(s.charger, 0.0) + s.need_kwh
    cfg = {c["id"]: c for c in sc.chargers}
    ids = list(r.per_charger_kwh)
    mine = {c: r.per_charger_kwh[c] for c in ids}
    theirs = {c: sum(ref.get(c, [])) for c in ids}
    total_m, total_t = sum(mine.values()), sum(theirs.values())
    print(f"   breakdown against the {what} ({total_t:.1f} kWh; evpilot {total_m:.1f}, "
          f"short {total_t - total_m:.1f} kWh)")  # fmt: skip
    order = sorted(ids, key=lambda c: mine[c] - theirs[c])
    print(f"     {'charger':8}{'circuit':>8}{'ph':>4}{'need':>9}{'evpilot':>9}{'bound':>9}{'short':>8}")
    for c in order[:top]:
        ph = cfg[c].get("phases", 3)
        print(f"     {c:8}{cfg[c].get('circuit', '-'):>8}{ph:>4}{need.get(c, 0.0):9.1f}{mine[c]:9.1f}"
              f"{theirs[c]:9.1f}{theirs[c] - mine[c]:8.1f}")  # fmt: skip
    short_full = sum(theirs[c] - mine[c] for c in ids if mine[c] >= need.get(c, 0.0) - 0.5)
    print(f"     ({len(ids)} chargers; short where evpilot filled every car: {short_full:.1f} kWh)")
    groups: dict[str, list[str]] = {}
    for c in ids:
        groups.setdefault(f"{cfg[c].get('circuit', '-')} {cfg[c].get('phases', 3)}ph", []).append(c)
    print("     per circuit and phase count: " + ", ".join(
        f"{g} {sum(theirs[c] - mine[c] for c in cs):+.1f}" for g, cs in sorted(groups.items())
    ))  # fmt: skip
    hours = len(next(iter(r.hourly_kwh.values()), []))
    print(f"     {'hour':8}{'evpilot':>9}{'bound':>9}{'short':>8}{'cum':>8}  most short")
    cum = 0.0
    for h in range(hours):
        m = sum(r.hourly_kwh[c][h] for c in ids)
        t = sum(ref[c][h] for c in ids if c in ref)
        cum += t - m
        worst = sorted(ids, key=lambda c: r.hourly_kwh[c][h] - (ref[c][h] if c in ref else 0.0))[:3]
        who = ", ".join(f"{c} {(ref[c][h] if c in ref else 0.0) - r.hourly_kwh[c][h]:+.1f}" for c in worst)
        tod = int(from_h + h) % 24
        print(f"     {tod:02d}:00   {m:9.1f}{t:9.1f}{t - m:8.1f}{cum:8.1f}  {who}")


def summary_json(reports: Sequence[ScenarioReport]) -> dict[str, Any]:
    """A machine-readable summary (for comparing runs)."""
    out: dict[str, Any] = {}
    for rep in reports:
        entry: dict[str, Any] = {
            "title": rep.scenario.title,
            "lp_energy_kwh": rep.lp_energy.value if rep.lp_energy else None,
            "lp_pv_self_consumption": rep.lp_pv.value if rep.lp_pv else None,
            "milp_energy_kwh": rep.milp.value if rep.milp else None,
            "milp_optimal": rep.milp.optimal if rep.milp else None,
            "milp_gap": rep.milp.gap if rep.milp else None,
            "milp_best_schedule_kwh": rep.milp.incumbent if rep.milp else None,
            "fair_milp_energy_kwh": rep.fair.value if rep.fair else None,
            "goals": [asdict(g) for g in goal_rows(rep)],
        }
        for name, r in rep.runs.items():
            d = asdict(r)
            for key in ("house", "pv_a", "volts", "events"):
                d.pop(key)
            d["events_long"] = r.long_events
            d["events_goal"] = r.events_at_least(EVENT_GOAL_S)
            d["longest_s"] = r.longest_s
            d["self_consumption"] = r.self_consumption
            entry[name] = d
        out[f"S{rep.scenario.number}"] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", type=int, action="append", choices=sorted(SCENARIOS),
                   help="run only this scenario (repeatable; default all)")  # fmt: skip
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    p.add_argument("--from-hour", type=float, default=0.0, help="time of day the run starts (default 0)")
    p.add_argument("--controllers", default=",".join(CONTROLLERS), help="comma list of evpilot,static,slow")
    p.add_argument("--lp-step", type=float, default=None, help="LP period in s (default 60, depot 300)")
    p.add_argument("--no-lp", action="store_true", help="skip the LP optimum and the MIN-aware bound")
    p.add_argument("--no-milp", action="store_true", help="skip the MIN-aware bound (MILP)")
    p.add_argument("--milp-step", type=float, default=None,
                   help="MILP period in s, a multiple of the LP's (default: the LP's)")  # fmt: skip
    p.add_argument("--milp-time", type=float, default=180.0, help="MILP time limit per scenario (s)")
    p.add_argument("--milp-log", action="store_true", help="print the MILP's steps and HiGHS's log")
    p.add_argument("--jobs", type=int, default=1, help="parallel simulation processes (default 1)")
    p.add_argument("--progress-h", type=float, default=6.0, help="progress line every N simulated h")
    p.add_argument("--json", help="also write a JSON summary to this file")
    p.add_argument("--breakdown", action="store_true",
                   help="evpilot's kWh against the bound's schedule per charger and hour")  # fmt: skip
    args = p.parse_args(argv)
    if not 0 <= args.from_hour < 24 or args.hours <= 0 or args.from_hour + args.hours > 24 + 1e-9:
        p.error("--from-hour/--hours must stay within one day")
    controllers = [c for c in args.controllers.split(",") if c]
    if any(c not in CONTROLLERS for c in controllers) or not controllers:
        p.error(f"--controllers: choose from {','.join(CONTROLLERS)}")
    numbers = args.scenario or sorted(SCENARIOS)
    jobs = [
        Job(n, c, args.from_hour, args.hours, args.lp_step, args.progress_h)
        for n in numbers
        for c in controllers
    ]
    # The depot dominates the wall time; start it first so parallel runs end together.
    jobs.sort(key=lambda j: -len(SCENARIOS[j.scenario]().chargers))
    print(f"day benchmark: scenarios {numbers}, {args.hours:g} h from {args.from_hour:g}:00, "
          f"controllers {controllers}, {len(jobs)} runs, {args.jobs} process(es)", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    results: dict[tuple[int, str], RunResult] = {}
    if args.jobs > 1:
        with multiprocessing.Pool(args.jobs) as pool:
            for job, res in zip(jobs, pool.imap(run, jobs), strict=True):
                results[(job.scenario, job.controller)] = res
                print(f"  done S{job.scenario} {job.controller} ({res.wall_s:.0f} s)", flush=True)
    else:
        for job in jobs:
            res = run(job)
            results[(job.scenario, job.controller)] = res
            print(f"  done S{job.scenario} {job.controller} ({res.wall_s:.0f} s)", flush=True)
    reports = []
    for n in numbers:
        sc = SCENARIOS[n]()
        runs = {c: results[(n, c)] for c in controllers}
        rep = ScenarioReport(sc, runs, None, None)
        if not args.no_lp:
            rep.lp_energy, rep.lp_pv, rep.milp, rep.milp_error = solve_lp(
                sc, runs, args.from_hour, args.hours, args.milp_step, args.milp_time, not args.no_milp,
                args.milp_log,
            )  # fmt: skip
            if sc.fair_bound and not args.no_milp:
                rep.fair = solve_fair(sc, runs, args.from_hour, args.hours, args.milp_time, args.milp_log)
        reports.append(rep)
        print_report(rep, args.from_hour)
        if args.breakdown:
            print_breakdown(rep, args.from_hour)
    print_goals(reports)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary_json(reports), fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
