"""The day benchmark's harness: baselines, the LP optimum and the recorder on short runs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from day_baselines import static_split
from day_scenarios import SCENARIOS, Job, run
from evpilot.config import parse_config


def _site(**site: object) -> tuple[object, list[object]]:
    cfg = parse_config({"site": site, "chargers": [{"id": "a"}, {"id": "b", "phases": 1, "phase": 2}]})
    return cfg.site_core(), [c.core() for c in cfg.chargers]


def test_static_split_divides_each_phase_by_its_chargers() -> None:
    site, chargers = _site(mains_limit=25)
    # L1 and L3 carry only charger a; L2 carries both.
    assert static_split(site, chargers) == {"a": 12.5, "b": 12.5}  # type: ignore[arg-type]
    site, chargers = _site(mains_limit=25, capacity_limit=40)
    assert static_split(site, chargers) == {"a": 10.0, "b": 10.0}  # type: ignore[arg-type]


def test_static_split_of_the_depot_respects_every_node() -> None:
    sc = SCENARIOS[4]()
    cfg = sc.config(0, 1)
    split = static_split(cfg.site_core(), [c.core() for c in cfg.chargers])
    assert min(split.values()) >= 6.0
    limits = {c.name: c.limit for c in cfg.site.circuits}
    parents = {c.name: c.parent for c in cfg.site.circuits}
    load: dict[tuple[str, int], float] = {}
    for c in cfg.chargers:
        phases = [c.phase - 1] if c.phases == 1 else [0, 1, 2]
        node: str | None = c.circuit
        chain = [""]
        while node is not None:
            chain.append(node)
            node = parents[node]
        for n in chain:
            for p in phases:
                load[(n, p)] = load.get((n, p), 0.0) + split[c.id]
    for (n, _p), amps in load.items():
        assert amps <= (cfg.site.mains_limit if n == "" else limits[n]) + 1e-9


def _lp(
    site: dict[str, object], charger: dict[str, object], pv_a: float, car_phases: int = 3, starts: int = 0
) -> float:
    pytest.importorskip("scipy")
    from day_lp import CarSession, optimum

    cfg = parse_config({"site": site, "chargers": [charger]})
    periods = 60
    session = CarSession(str(charger["id"]), 0, 3600, 300, 10, 100, 32, car_phases)
    house = [(5.0, 5.0, 5.0)] * periods
    volts = [(230.0, 230.0, 230.0)] * periods
    cid = str(charger["id"])
    pv = [pv_a] * periods
    result = optimum(cfg, [session], house, pv, volts, 60, 3600, "energy", solar_starts={cid: starts})
    assert result.status.startswith("Optimization terminated")
    return result.value


def test_lp_fills_the_mains_headroom_for_an_hour() -> None:
    value = _lp({"mains_limit": 25}, {"id": "a"}, 0.0)
    assert math.isclose(value, 20 * 3 * 230 / 1000, rel_tol=1e-6)


# One start's grid allowance of a 3-phase solar charger: MIN on 3 phases for the start grace (40 s)
# plus the STOP timer (10 min), in kWh at 230 V.
ONE_START_KWH = 6 * 3 * (40 + 600) * 230 / 3.6e6


def test_lp_solar_mode_uses_the_surplus_and_the_start_and_stop_allowance() -> None:
    site = {"mains_limit": 25, "mode": "solar"}
    # 8 A of PV per phase against 5 A of house: 9 A of surplus, summed over the phases.
    value = _lp(site, {"id": "a"}, 8.0)
    assert math.isclose(value, 9 * 230 / 1000 + ONE_START_KWH, rel_tol=1e-6)
    value = _lp(site, {"id": "a", "contactor2": "auto"}, 8.0)
    assert math.isclose(value, 9 * 230 / 1000 + ONE_START_KWH, rel_tol=1e-6)
    value = _lp({"mains_limit": 25, "mode": "solar", "solar": {"max_import": 6}}, {"id": "a"}, 8.0)
    assert math.isclose(value, 15 * 230 / 1000 + ONE_START_KWH, rel_tol=1e-6)
    # three measured starts: three allowances
    value = _lp(site, {"id": "a"}, 8.0, starts=3)
    assert math.isclose(value, 9 * 230 / 1000 + 3 * ONE_START_KWH, rel_tol=1e-6)


def test_lp_single_phase_car_uses_one_phase_of_a_three_phase_charger() -> None:
    value = _lp({"mains_limit": 25}, {"id": "a"}, 0.0, car_phases=1)
    assert math.isclose(value, 20 * 230 / 1000, rel_tol=1e-6)


def test_short_run_measures_each_controller_on_the_same_day() -> None:
    results = {c: run(Job(1, c, 0.0, 0.25, None, 24.0)) for c in ("evpilot", "static", "slow")}
    days = {round(r.house_sum, 6) for r in results.values()}
    assert len(days) == 1
    for r in results.values():
        assert r.seconds == 900
        assert len(r.house) == 15
        assert r.delivered_kwh > 1.0
        assert math.isclose(r.delivered_kwh, sum(r.per_charger_kwh.values()))
        # a quarter of an hour: one (partial) hour per charger, summing to its energy
        for cid, kwh in r.per_charger_kwh.items():
            assert len(r.hourly_kwh[cid]) == 1
            assert math.isclose(r.hourly_kwh[cid][0], kwh, abs_tol=1e-9)
    # A fixed 25 A on a 25 A mains with the house on top overloads the whole time.
    static = results["static"]
    assert static.over_s > 800
    assert static.longest_s > 800
    assert results["evpilot"].over_s < static.over_s


def test_an_overload_event_counts_from_six_seconds_and_the_goal_is_none_of_seven() -> None:
    from day_metrics import OverEvent, RunResult
    from day_scenarios import ScenarioReport, goal_rows

    events = [OverEvent("mains L1", 10, 5, 1.0), OverEvent("mains L2", 50, 6, 1.0)]
    r = RunResult("evpilot", 3600, events=events)
    r.switches = {"cp1": 0}
    assert r.long_events == 1
    assert r.events_at_least(7) == 0
    rep = ScenarioReport(SCENARIOS[1](), {"evpilot": r}, None, None)
    [event_goal] = [g for g in goal_rows(rep) if g.figure.startswith("overload")]
    assert event_goal.met is True
    r.events.append(OverEvent("capacity", 100, 7, 2.0))
    assert r.long_events == 2
    [event_goal] = [g for g in goal_rows(rep) if g.figure.startswith("overload")]
    assert event_goal.met is False


def _fairness_run(
    currents: dict[str, float],
    one_phase: tuple[int, ...] = (1,),
    house: tuple[float, float, float] = (1, 1, 1),
) -> list[float]:
    """Jain samples of 45 min where a 3-phase charger and 1-phase ones (on `one_phase`) get fixed currents."""
    from day_baselines import StaticSplit
    from day_metrics import Recorder, RunResult
    from evpilot.control.build import assemble

    ones = {("one" if p == 1 else f"one{p}"): p for p in one_phase}
    cars = [
        {"charger": cid, "at_s": 0, "battery_kwh": 300, "soc": 10, "max_current": 32, "phases": phases}
        for cid, phases in (("three", 3), *((cid, 1) for cid in ones))
    ]
    chargers = [{"id": "three"}, *({"id": cid, "phases": 1, "phase": p} for cid, p in ones.items())]
    config = parse_config(
        {
            "site": {"mains_limit": 32, "mode": "smart", "fallback_current": 6},
            "chargers": chargers,
            "sim": {"seed": 1, "pv_kwp": 0, "house_base": list(house), "spike_rate_h": 0, "cars": cars},
        }
    )
    start = 1_700_000_000.0
    parts = assemble(config, start)
    assert parts.sim is not None
    split = StaticSplit(parts.engine.site, [c.config for c in parts.engine.chargers.values()])
    split.currents = currents
    parts.engine.compute = split
    rec = Recorder(config, parts.engine, parts.sim, start, RunResult("fixed", 2700))
    for k in range(1, 2701):
        parts.engine.step(start + k)
        rec.sample(start + k)
    return rec.finish().jain


def test_fairness_compares_a_three_phase_charger_with_a_one_phase_one_on_the_phase_they_share() -> None:
    # Equal current per phase on the binding L1: fair, though the phase sets differ.
    fair = _fairness_run({"three": 15.0, "one": 15.0})
    assert fair
    assert min(fair) > 0.999
    # The 3-phase charger takes 24 A of L1 and leaves the 1-phase one 6 A: it shows up.
    starved = _fairness_run({"three": 24.0, "one": 6.0})
    assert starved
    assert max(starved) < 0.75


def test_fairness_does_not_compare_a_three_phase_charger_where_another_full_phase_holds_it() -> None:
    # L2 holds the 3-phase charger (10 A each with the 1-phase one there); L3 is full too, only because
    # the 1-phase charger on L3 takes the 21 A the 3-phase one cannot use: max-min fair, not unfair.
    held = _fairness_run({"three": 10.0, "one2": 10.0, "one3": 21.0}, (2, 3), (1, 15, 1))
    assert held
    assert min(held) > 0.999
    # With L2 free, L3 is what holds the 3-phase charger: 10 A there against 21 A is unfair.
    starved = _fairness_run({"three": 10.0, "one3": 21.0}, (3,), (1, 1, 1))
    assert starved
    assert max(starved) < 0.9


def test_min_aware_bound_lies_between_a_feasible_schedule_and_the_lp() -> None:
    pytest.importorskip("scipy")
    from day_lp import CarSession, optimum

    cfg = parse_config({"site": {"mains_limit": 25}, "chargers": [{"id": "a"}]})
    # Half an hour with 4 A of headroom (below MIN), then half an hour with 20 A.
    house = [(21.0, 21.0, 21.0)] * 30 + [(5.0, 5.0, 5.0)] * 30
    volts = [(230.0, 230.0, 230.0)] * 60
    pv = [0.0] * 60
    session = CarSession("a", 0, 3600, 300, 10, 100, 32, 3)
    args = (cfg, [session], house, pv, volts, 60, 3600, "energy")
    lp = optimum(*args)
    milp = optimum(*args, min_aware=True, time_limit=60)
    kwh_per_a_min = 3 * 230 * 60 / 3.6e6
    # a feasible schedule: nothing in the first half hour, 20 A in the second
    feasible = 20 * 30 * kwh_per_a_min
    assert milp.optimal
    assert milp.integers > 0
    assert feasible - 1e-6 <= milp.value <= lp.value + 1e-6
    assert math.isclose(lp.value, (4 + 20) * 30 * kwh_per_a_min, rel_tol=1e-6)
    assert math.isclose(milp.value, feasible, rel_tol=1e-3)
    # the schedule per period: nothing while the headroom is below MIN, 20 A after
    row = milp.per_period_kwh["a"]
    assert max(row[:30]) <= 1e-6
    assert all(math.isclose(x, 20 * kwh_per_a_min, rel_tol=1e-3) for x in row[30:])


def test_breakdown_splits_the_bound_s_periods_at_the_hours() -> None:
    from day_lp import LpResult
    from day_scenarios import _hourly

    # 40-min periods over 2 h: the second one straddles 01:00
    bound = LpResult(6.0, {"a": 6.0}, "ok", 0.0, 3, 0, per_period_kwh={"a": [1.0, 2.0, 3.0]}, period_s=2400)
    assert _hourly(bound, 7200)["a"] == pytest.approx([2.0, 4.0])


def test_min_aware_bound_lets_a_nearly_full_car_draw_below_min() -> None:
    pytest.importorskip("scipy")
    from day_lp import CarSession, optimum

    cfg = parse_config({"site": {"mains_limit": 25}, "chargers": [{"id": "a"}]})
    house = [(5.0, 5.0, 5.0)] * 60
    volts = [(230.0, 230.0, 230.0)] * 60
    # 10 kWh from 97 % to 100 %: the taper keeps a 16 A car below MIN (6 A) from 92.5 % on.
    session = CarSession("a", 0, 3600, 10, 97, 100, 16, 3)
    args = (cfg, [session], house, [0.0] * 60, volts, 60, 3600, "energy")
    lp = optimum(*args)
    milp = optimum(*args, min_aware=True, time_limit=60)
    # at 97 % the car accepts 2.4 A: without the taper's exception the MILP could deliver nothing
    assert lp.value > 0.2
    assert milp.optimal
    assert math.isclose(milp.value, lp.value, rel_tol=1e-3)


def test_min_aware_bound_imports_for_a_solar_charger_only_while_it_is_held_at_min() -> None:
    pytest.importorskip("scipy")
    from day_lp import CarSession, optimum

    solar = {"start_current": 6, "stop_min": 10, "max_import": 0, "start_grace_s": 40}
    cfg = parse_config(
        {
            "site": {"mains_limit": 25, "mode": "solar", "solar": solar},
            "chargers": [{"id": "a", "phases": 1, "phase": 1}],
        }
    )
    # 12 A of surplus all hour: twice MIN, so a solar charger never runs from the grid.
    house = [(1.0, 1.0, 1.0)] * 60
    pv = [5.0] * 60
    volts = [(230.0, 230.0, 230.0)] * 60
    session = CarSession("a", 0, 3600, 300, 10, 100, 32, 1)
    args = (cfg, [session], house, pv, volts, 60, 3600, "energy")
    lp = optimum(*args, solar_starts={"a": 1})
    milp = optimum(*args, min_aware=True, time_limit=60, solar_starts={"a": 1})
    kwh = 230 / 3.6e6
    # the LP may add MIN from the grid for start grace + STOP timer (640 s) on top of the surplus
    assert math.isclose(lp.value, (12 * 3600 + 6 * 640) * kwh, rel_tol=1e-6)
    assert milp.optimal
    assert milp.gap <= 1e-4
    assert math.isclose(milp.value, 12 * 3600 * kwh, rel_tol=1e-4)
    assert math.isclose(milp.incumbent, milp.value, rel_tol=1e-4)


def test_min_aware_bound_reports_its_best_schedule_and_the_gap() -> None:
    pytest.importorskip("scipy")
    from day_lp import CarSession, optimum

    cfg = parse_config({"site": {"mains_limit": 25}, "chargers": [{"id": "a"}, {"id": "b"}]})
    # 9 A of headroom: only one of the two chargers fits at MIN, so the best schedule runs one at 9 A.
    house = [(16.0, 16.0, 16.0)] * 60
    volts = [(230.0, 230.0, 230.0)] * 60
    sessions = [CarSession(c, 0, 3600, 300, 10, 100, 32, 3) for c in ("a", "b")]
    args = (cfg, sessions, house, [0.0] * 60, volts, 60, 3600, "energy")
    milp = optimum(*args, min_aware=True, time_limit=1)
    kwh = 3 * 230 / 3.6e6
    assert milp.incumbent <= milp.value + 1e-9
    assert math.isclose(milp.incumbent, 9 * 3600 * kwh, rel_tol=1e-4)
    assert milp.gap == pytest.approx(max(0.0, milp.value - milp.incumbent) / milp.value)


def test_jain_pair_ratio_gives_the_index_it_is_asked_for() -> None:
    from day_lp import jain_pair_ratio

    t = jain_pair_ratio(0.99)
    assert math.isclose((1 + t) ** 2 / (2 * (1 + t * t)), 0.99, rel_tol=1e-9)
    assert 0.8 < t < 0.83


def test_fair_bound_keeps_a_three_phase_car_from_starving_a_one_phase_car_on_their_phase() -> None:
    pytest.importorskip("scipy")
    from day_lp import CarSession, jain_pair_ratio, optimum

    cfg = parse_config({"site": {"mains_limit": 25}, "chargers": [{"id": "a"}, {"id": "b"}]})
    # 12 A of room on L1, 22 A on L2/L3, for one 15-min window; neither car near full
    house = [(13.0, 3.0, 3.0)] * 15
    volts = [(230.0, 230.0, 230.0)] * 15
    sessions = [CarSession("a", 0, 900, 300, 10, 100, 32, 3), CarSession("b", 0, 900, 300, 10, 100, 32, 1)]
    args = (cfg, sessions, house, [0.0] * 15, volts, 60, 900, "energy")
    free = optimum(*args, min_aware=True, time_limit=60)
    fair = optimum(*args, min_aware=True, time_limit=10, fair_ratio=jain_pair_ratio(0.99))
    kwh = 230 * 900 / 3.6e6
    # unfair: the 3-phase car takes L1's 12 A on three phases; fair: about half of L1 each
    assert math.isclose(free.value, 36 * kwh, rel_tol=1e-4)
    # 6 A each is fair; the bound cannot beat L1 split at the least fair ratio
    assert 24 * kwh - 1e-6 <= fair.incumbent <= fair.value <= 12 / (1 + 0.8173) * 3.8173 * kwh + 1e-6
    a, b = fair.per_charger_kwh["a"] / 3, fair.per_charger_kwh["b"]
    assert min(a, b) >= 0.817 * max(a, b) - 1e-6
