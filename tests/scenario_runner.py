"""Golden site scenarios: a site, a timeline of events, expected allocations at given times."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evpilot.config import parse_config
from evpilot.control.build import assemble
from evpilot.devices.apifed import ApiFedMeter
from evpilot.sim.ev import CarSpec

START = 1_700_000_000.0
SCENARIO_DIR = Path(__file__).parent / "scenarios"
# Defaults that make a scenario quiet: no cars, no PV, no random appliances, fixed daytime.
QUIET_SIM = {
    "pv_kwp": 0,
    "spike_rate_h": 0,
    "first_spike_s": None,
    "cars": [],
    "house_base": [0, 0, 0],
    "start_tod_h": 12,
}


@dataclass
class Result:
    """What a scenario run observed."""

    failures: list[str] = field(default_factory=list)
    overload_events: list[tuple[int, int, float]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)


def load(path: Path) -> dict[str, Any]:
    """Read a scenario file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _close(actual: float, want: Any, tol: float) -> bool:
    if isinstance(want, dict):
        lo = want.get("min", float("-inf"))
        hi = want.get("max", float("inf"))
        return bool(lo - 1e-9 <= actual <= hi + 1e-9)
    return abs(actual - float(want)) <= tol


def run(scenario: dict[str, Any]) -> Result:
    """Run a scenario second by second on the simulator and check its expectations."""
    cfg = copy.deepcopy(scenario.get("config", {}))
    sim = {**QUIET_SIM, **cfg.get("sim", {})}
    cfg["sim"] = sim
    config = parse_config(cfg)
    parts = assemble(config, START)
    engine, simsite = parts.engine, parts.sim
    assert simsite is not None
    events: dict[int, list[dict[str, Any]]] = {}
    for ev in scenario.get("events", []):
        events.setdefault(int(ev["at"]), []).append(ev)
    expects: dict[int, list[dict[str, Any]]] = {}
    for ex in scenario.get("expect", []):
        expects.setdefault(int(ex["at"]), []).append(ex)
    end = int(scenario.get("duration", max([*events, *expects, 0]) + 1))
    tol = float(scenario.get("tolerance", 0.25))
    battery: float | None = None
    circuit_loads: dict[str, list[float]] = {}
    res = Result()
    over_since: list[int | None] = [None, None, None]
    limit = config.site.mains_limit
    for t in range(end + 1):
        for ev in events.get(t, []):
            if "plug" in ev:
                p = dict(ev["plug"])
                cid = p.pop("charger")
                simsite.pilots[cid].plug(CarSpec(**p))
            if "unplug" in ev:
                simsite.pilots[ev["unplug"]].unplug()
            if "house" in ev:
                h = ev["house"]
                simsite.house.override = None if h is None else (float(h[0]), float(h[1]), float(h[2]))
            if "pv_w" in ev:
                simsite.pv.override = ev["pv_w"]
            if "meter" in ev:
                assert parts.sim_meter is not None
                parts.sim_meter.enabled = ev["meter"] == "online"
            if "battery" in ev:
                battery = ev["battery"]
            if "circuit_load" in ev:
                c = ev["circuit_load"]
                circuit_loads[c["name"]] = c["currents"]
            if "grid_relay" in ev:
                engine.grid_relay_open = ev["grid_relay"] == "open"
            if "ambient" in ev:
                simsite.params.ambient_c = float(ev["ambient"])
            if "site_cap" in ev:
                c = ev["site_cap"]
                exp = c.get("timeout_s")
                engine.set_site_cap(c["source"], c["amps"], None if exp is None else START + t + exp)
            if "command" in ev:
                c = dict(ev["command"])
                ch = engine.chargers[c.pop("charger")]
                now = START + t
                for key, value in c.items():
                    if key == "user_limit":
                        ch.set_user_limit(value)
                    elif key == "override":
                        ch.set_override(value)
                    elif key == "lease":
                        ch.set_lease("lease", value["amps"], now + value["timeout_s"])
                    elif key == "mode":
                        ch.set_mode(value)
                    elif key == "phase_mode":
                        ch.set_phase_mode(value)
                    elif key == "enabled":
                        ch.set_enabled(value)
                    elif key == "stop":
                        ch.request_stop(now)
                    elif key == "start":
                        ch.request_start(now)
                    else:
                        raise KeyError(f"unknown command {key}")
        if battery is not None:
            engine.battery.push(float(battery), START + t)
        for name, other in circuit_loads.items():
            # The circuit meter sees its other loads plus the chargers wired to it.
            seen = [float(x) for x in other]
            for cid, pilot in simsite.pilots.items():
                if engine.chargers[cid].config.circuit == name:
                    d = pilot.mains_draw()
                    seen = [seen[p] + d[p] for p in range(3)]
            meter = engine.circuit_meters[name]
            assert isinstance(meter, ApiFedMeter)
            meter.push((seen[0], seen[1], seen[2]), START + t)
        alloc = engine.step(START + t)
        mains = simsite.mains_currents
        for p in range(3):
            if mains[p] > limit + 0.05:
                if over_since[p] is None:
                    over_since[p] = t
            elif over_since[p] is not None:
                since = over_since[p]
                assert since is not None
                res.overload_events.append((p, t - since, max(mains)))
                over_since[p] = None
        res.trace.append(
            {
                "t": t,
                "mains": [round(x, 2) for x in mains],
                **{
                    cid: (a.current, a.source, a.phases, engine.chargers[cid].signaled)
                    for cid, a in alloc.chargers.items()
                },
            }
        )
        for ex in expects.get(t, []):
            for key, want in ex.items():
                if key == "at":
                    continue
                if key == "site":
                    for k, v in want.items():
                        if k == "fallback" and alloc.fallback != v:
                            res.failures.append(f"t={t} site.fallback={alloc.fallback}, want {v}")
                        if k == "mains_max" and not max(mains) <= v + 1e-6:
                            res.failures.append(f"t={t} mains {mains} above {v}")
                    continue
                a = alloc.chargers[key]
                ch = engine.chargers[key]
                for k, v in want.items():
                    actual: Any
                    if k == "current":
                        actual = a.current
                        ok = _close(actual, v, tol)
                    elif k == "signaled":
                        actual = ch.signaled
                        ok = _close(actual, v, tol)
                    elif k == "source":
                        actual = a.source
                        ok = actual == v if isinstance(v, str) else actual in v
                    elif k == "phases":
                        actual = a.phases
                        ok = actual == v
                    elif k == "state":
                        actual = ch.pilot.value
                        ok = actual == v
                    elif k == "work_state":
                        actual = ch.work_state().value
                        ok = actual == v
                    elif k == "drawing":
                        actual = max(ch.currents)
                        ok = _close(actual, v, tol)
                    else:
                        raise KeyError(f"unknown expectation {k}")
                    if not ok:
                        res.failures.append(f"t={t} {key}.{k}={actual!r}, want {v!r}")
    max_over = int(scenario.get("max_overload_s", 6))
    for p, dur, peak in res.overload_events:
        if dur > max_over:
            res.failures.append(f"phase L{p + 1} over the mains limit for {dur} s (peak {peak:.1f} A)")
    return res


def all_scenarios() -> list[Path]:
    """Every scenario file."""
    return sorted([*SCENARIO_DIR.glob("*.yaml"), *SCENARIO_DIR.glob("*.json")])
