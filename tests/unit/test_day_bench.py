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


def _lp(site: dict[str, object], charger: dict[str, object], pv_a: float, car_phases: int = 3) -> float:
    pytest.importorskip("scipy")
    from day_lp import CarSession, optimum

    cfg = parse_config({"site": site, "chargers": [charger]})
    periods = 60
    session = CarSession(str(charger["id"]), 0, 3600, 300, 10, 100, 32, car_phases)
    house = [(5.0, 5.0, 5.0)] * periods
    volts = [(230.0, 230.0, 230.0)] * periods
    result = optimum(cfg, [session], house, [pv_a] * periods, volts, 60, 3600, "energy")
    assert result.status.startswith("Optimization terminated")
    return result.value


def test_lp_fills_the_mains_headroom_for_an_hour() -> None:
    value = _lp({"mains_limit": 25}, {"id": "a"}, 0.0)
    assert math.isclose(value, 20 * 3 * 230 / 1000, rel_tol=1e-6)


def test_lp_solar_mode_uses_only_the_surplus_and_may_switch_to_one_phase() -> None:
    site = {"mains_limit": 25, "mode": "solar"}
    # 8 A of PV per phase against 5 A of house: 9 A of surplus, summed over the phases.
    value = _lp(site, {"id": "a"}, 8.0)
    assert math.isclose(value, 9 * 230 / 1000, rel_tol=1e-6)
    value = _lp(site, {"id": "a", "contactor2": "auto"}, 8.0)
    assert math.isclose(value, 9 * 230 / 1000, rel_tol=1e-6)
    value = _lp({"mains_limit": 25, "mode": "solar", "solar": {"max_import": 6}}, {"id": "a"}, 8.0)
    assert math.isclose(value, 15 * 230 / 1000, rel_tol=1e-6)


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
    # A fixed 25 A on a 25 A mains with the house on top overloads the whole time.
    static = results["static"]
    assert static.over_s > 800
    assert static.longest_s > 800
    assert results["evpilot"].over_s < static.over_s
