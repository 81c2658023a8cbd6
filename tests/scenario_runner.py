"""Golden site scenarios: a site, a timeline of events, expected allocations at given times.

Every second the runner also checks every node of the site tree against its limit: each mains
phase, each circuit phase, the capacity sum, each external site cap per phase and the §14a grid
relay. An overload lasting `max_overload_s` seconds or more (default 6) fails the scenario. A node
counts as overloaded only while some charger below it draws on that phase: the house alone over a
fuse is not the controller's doing.

Events (each with `at`, seconds from the start):
  plug / unplug / house / pv_w / battery / ambient / grid_relay / site_cap / command
  meter: offline | online           the mains meter stops or resumes (sim or API-fed)
  mains_reading: [a, b, c] | null   an API-fed mains meter (`site.mains_meter: api`) sends these
                                    values (e.g. nan, a spike; null = the simulator's) until null
  circuit_load: {name, currents}    other loads wired on a circuit (a parent circuit sees them too);
                                    they are not part of `house` (which is what the mains sees)
      optional lag_s, stamp         the circuit's API meter lags: it sends the other loads of now plus
                                    the chargers' draw of `lag_s` seconds ago (an integrating or slowly
                                    polled meter), stamped `taken_at` now (`stamp: now`, the default, as
                                    `PUT /api/meters/circuits` does) or `lag_s` ago (`stamp: taken`)
  circuit_meter: {name, state}      offline: the circuit's API meter stops sending; online: resumes
  circuit_reading: {name, currents} the circuit meter sends these values instead, until currents null
  charger_meter: {charger, state}   frozen: the charger's pilot/meter reading stops updating
                                    (same values, same `taken_at`); live: it updates again
Expectations: per charger `current`, `signaled`, `source` (a string or a list), `phases`, `state`,
`work_state`, `drawing`; `site` with `fallback`, `mains_max`, `rejected` (the set of rejected
readings). Top level: `max_phase_switches: {charger: n}` bounds the contactor's 1/3-phase switches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from evpilot.config import parse_config
from evpilot.control.build import assemble
from evpilot.core.balancer import circuit_paths
from evpilot.core.charger import PilotOutput, PilotReading
from evpilot.core.site import GRID_RELAY_W, NOMINAL_VOLTAGE, Allocation, Snapshot
from evpilot.devices.apifed import ApiFedMeter
from evpilot.devices.base import PilotHardware
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
# A node is over its limit only beyond this margin (meter rounding, float noise).
OVER_MARGIN_A = 0.05
# A charger "draws" on a phase above this current.
DRAWING_A = 0.05
PHASE_NAMES = ("L1", "L2", "L3")


class Stamp(StrEnum):
    """The `taken_at` a lagging circuit meter puts on its reading."""

    NOW = "now"  # when it is sent (what `PUT /api/meters/circuits` records)
    TAKEN = "taken"  # when the chargers' draw in it was measured (`lag_s` ago)


@dataclass(frozen=True, slots=True)
class MeterLag:
    """A circuit meter that sees its chargers' draw `seconds` late."""

    seconds: int
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class OverloadEvent:
    """A node over its limit for `duration` consecutive seconds from `start`."""

    node: str
    phase: int | None
    start: int
    duration: int
    peak: float
    limit: float

    def describe(self) -> str:
        """One line for a failure message."""
        where = self.node if self.phase is None else f"{self.node} {PHASE_NAMES[self.phase]}"
        return (
            f"{where} over its limit {self.limit:g} A for {self.duration} s from t={self.start}"
            f" (peak {self.peak:.2f} A)"
        )


@dataclass
class Result:
    """What a scenario run observed."""

    failures: list[str] = field(default_factory=list)
    overload_events: list[OverloadEvent] = field(default_factory=list)
    phase_switches: dict[str, int] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)


class FreezablePilot:
    """A pilot whose reading can be frozen: `read` then returns the last reading, old `taken_at` too."""

    def __init__(self, inner: PilotHardware) -> None:
        self.inner = inner
        self.frozen: PilotReading | None = None

    def read(self) -> PilotReading:
        """The live reading, or the one frozen."""
        return self.frozen if self.frozen is not None else self.inner.read()

    def write(self, output: PilotOutput) -> None:
        """Writes always reach the hardware."""
        self.inner.write(output)


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


def _phases(values: Any) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


class _Watch:
    """Open overload events per (node, phase), closed into `OverloadEvent`s."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, int | None], tuple[int, float, float]] = {}
        self.events: list[OverloadEvent] = []

    def see(self, t: int, node: str, phase: int | None, value: float, limit: float, drawing: bool) -> None:
        key = (node, phase)
        if drawing and value > limit + OVER_MARGIN_A:
            since, peak, _ = self.open.get(key, (t, value, limit))
            self.open[key] = (since, max(peak, value), limit)
        elif key in self.open:
            self._close(key, t)

    def _close(self, key: tuple[str, int | None], t: int) -> None:
        since, peak, limit = self.open.pop(key)
        self.events.append(OverloadEvent(key[0], key[1], since, t - since, peak, limit))

    def close_all(self, t: int) -> None:
        for key in list(self.open):
            self._close(key, t)


def run(scenario: dict[str, Any], allocator: Callable[[Snapshot, float], Allocation] | None = None) -> Result:
    """Run a scenario second by second on the simulator and check its expectations.

    `allocator` replaces `compute` (the runner's own tests prove it catches a bad one).
    """
    cfg = copy.deepcopy(scenario.get("config", {}))
    sim = {**QUIET_SIM, **cfg.get("sim", {})}
    cfg["sim"] = sim
    config = parse_config(cfg)
    parts = assemble(config, START)
    engine, simsite = parts.engine, parts.sim
    assert simsite is not None
    if allocator is not None:
        engine.compute = allocator
    events: dict[int, list[dict[str, Any]]] = {}
    for ev in scenario.get("events", []):
        events.setdefault(int(ev["at"]), []).append(ev)
    expects: dict[int, list[dict[str, Any]]] = {}
    for ex in scenario.get("expect", []):
        expects.setdefault(int(ex["at"]), []).append(ex)
    end = int(scenario.get("duration", max([*events, *expects, 0]) + 1))
    tol = float(scenario.get("tolerance", 0.25))
    battery: float | None = None
    site = config.site
    circuits = tuple(site.circuits)
    paths = circuit_paths(engine.site.circuits)
    # Circuits each charger sits under, at any depth.
    under: dict[str, tuple[str, ...]] = {
        cid: paths.get(ch.config.circuit, ()) if ch.config.circuit else ()
        for cid, ch in engine.chargers.items()
    }
    circuit_loads: dict[str, tuple[float, float, float]] = {}
    circuit_offline: set[str] = set()
    circuit_override: dict[str, tuple[float, float, float]] = {}
    mains_online = True
    # Per phase: the value the API-fed mains meter sends instead of the simulator's (None: the sim's).
    mains_override: tuple[float | None, ...] | None = None
    caps: dict[str, tuple[float, float | None]] = {}
    relay_open = False
    freezable: dict[str, FreezablePilot] = {}
    circuit_now: dict[str, list[float]] = {}
    lags: dict[str, MeterLag] = {}
    # Per whole second: what the chargers below each circuit drew (for lagging meters).
    charger_history: dict[int, dict[str, list[float]]] = {}

    def charger_currents() -> dict[str, list[float]]:
        """What the chargers below each circuit draw now."""
        out = {c.name: [0.0, 0.0, 0.0] for c in circuits}
        for cid, pilot in simsite.pilots.items():
            d = pilot.mains_draw()
            for node in under[cid]:
                acc = out[node]
                for p in range(3):
                    acc[p] += d[p]
        return out

    def circuit_currents() -> dict[str, list[float]]:
        """What flows through each circuit now: its (and its sub-circuits') other loads plus chargers."""
        out = charger_currents()
        for name, other in circuit_loads.items():
            for node in paths.get(name, ()):
                acc = out[node]
                for p in range(3):
                    acc[p] += other[p]
        return out

    def before_step(now: float) -> None:
        simsite.advance_to(now)
        if site.mains_meter == "api" and mains_online:
            m = simsite.mains_currents
            if mains_override is not None:
                m = tuple(m[p] if x is None else x for p, x in enumerate(mains_override))
            parts.api_meter.push((m[0], m[1], m[2]), now)
        circuit_now.clear()
        circuit_now.update(circuit_currents())
        t_now = round(now - START)
        charger_history[t_now] = charger_currents()
        for name, meter in engine.circuit_meters.items():
            if name in circuit_offline:
                continue
            assert isinstance(meter, ApiFedMeter)
            seen = circuit_override.get(name)
            taken = now
            lag = lags.get(name)
            if seen is None and lag is not None:
                # The other loads as they are now, the chargers as they were `lag.seconds` ago.
                then = charger_history.get(max(0, t_now - lag.seconds), charger_history[t_now])
                c = [circuit_now[name][p] - charger_history[t_now][name][p] + then[name][p] for p in range(3)]
                seen = (c[0], c[1], c[2])
                if lag.stamp is Stamp.TAKEN:
                    taken = now - lag.seconds
            if seen is None:
                c = circuit_now[name]
                seen = (c[0], c[1], c[2])
            meter.push(seen, taken)

    engine.before_step = before_step
    res = Result()
    watch = _Watch()
    max_over = int(scenario.get("max_overload_s", 6))
    cap_grace = site.cap_stop_min * 60.0
    last_phases = {cid: p.phases for cid, p in simsite.pilots.items()}
    switches = dict.fromkeys(simsite.pilots, 0)
    for t in range(end + 1):
        now = START + t
        for ev in events.get(t, []):
            if "plug" in ev:
                spec = dict(ev["plug"])
                cid = spec.pop("charger")
                simsite.pilots[cid].plug(CarSpec(**spec))
            if "unplug" in ev:
                simsite.pilots[ev["unplug"]].unplug()
            if "house" in ev:
                h = ev["house"]
                simsite.house.override = None if h is None else _phases(h)
            if "pv_w" in ev:
                simsite.pv.override = ev["pv_w"]
            if "meter" in ev:
                mains_online = ev["meter"] == "online"
                if parts.sim_meter is not None:
                    parts.sim_meter.enabled = mains_online
            if "mains_reading" in ev:
                assert site.mains_meter == "api", "mains_reading needs site.mains_meter: api"
                r = ev["mains_reading"]
                mains_override = None if r is None else tuple(None if x is None else float(x) for x in r)
            if "battery" in ev:
                battery = ev["battery"]
            if "circuit_load" in ev:
                c = ev["circuit_load"]
                circuit_loads[c["name"]] = _phases(c["currents"])
                if "lag_s" in c:
                    lags[c["name"]] = MeterLag(int(c["lag_s"]), Stamp(c.get("stamp", Stamp.NOW)))
            if "circuit_meter" in ev:
                c = ev["circuit_meter"]
                assert c["name"] in engine.circuit_meters, f"circuit {c['name']} has no meter"
                if c["state"] == "offline":
                    circuit_offline.add(c["name"])
                else:
                    circuit_offline.discard(c["name"])
            if "circuit_reading" in ev:
                c = ev["circuit_reading"]
                if c.get("currents") is None:
                    circuit_override.pop(c["name"], None)
                else:
                    circuit_override[c["name"]] = _phases(c["currents"])
            if "charger_meter" in ev:
                c = ev["charger_meter"]
                cid = c["charger"]
                if cid not in freezable:
                    freezable[cid] = FreezablePilot(engine.pilots[cid])
                    engine.pilots[cid] = freezable[cid]
                fp = freezable[cid]
                fp.frozen = fp.inner.read() if c["state"] == "frozen" else None
            if "grid_relay" in ev:
                relay_open = ev["grid_relay"] == "open"
                engine.grid_relay_open = relay_open
            if "ambient" in ev:
                simsite.params.ambient_c = float(ev["ambient"])
            if "site_cap" in ev:
                c = ev["site_cap"]
                exp = c.get("timeout_s")
                expires = None if exp is None else now + exp
                engine.set_site_cap(c["source"], c["amps"], expires)
                if c["amps"] is None:
                    caps.pop(c["source"], None)
                else:
                    caps[c["source"]] = (float(c["amps"]), expires)
            if "command" in ev:
                c = dict(ev["command"])
                ch = engine.chargers[c.pop("charger")]
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
            engine.battery.push(float(battery), now)
        alloc = engine.step(now)
        mains = simsite.mains_currents

        # ---- every node against its limit ---------------------------------------------------
        draws = {cid: pilot.mains_draw() for cid, pilot in simsite.pilots.items()}
        on_phase = [any(d[p] > DRAWING_A for d in draws.values()) for p in range(3)]
        for p in range(3):
            watch.see(t, "mains", p, mains[p], site.mains_limit, on_phase[p])
        for c in circuits:
            cur = circuit_now[c.name]
            for p in range(3):
                below = any(draws[cid][p] > DRAWING_A for cid in draws if c.name in under[cid])
                watch.see(t, f"circuit:{c.name}", p, cur[p], c.limit, below)
        if site.capacity_limit is not None:
            watch.see(t, "capacity", None, mains[0] + mains[1] + mains[2], site.capacity_limit, any(on_phase))
        ev_total = [sum(d[p] for d in draws.values()) for p in range(3)]
        for source, (amps, expires) in list(caps.items()):
            if expires is not None and now >= expires:
                del caps[source]
                continue
            for p in range(3):
                watch.see(t, f"site_cap:{source}", p, ev_total[p], amps, on_phase[p])
        if relay_open:
            watch.see(t, "grid_relay", None, sum(ev_total), GRID_RELAY_W / NOMINAL_VOLTAGE, any(on_phase))
        for cid, pilot in simsite.pilots.items():
            if pilot.phases != last_phases[cid]:
                switches[cid] += 1
                last_phases[cid] = pilot.phases

        res.trace.append(
            {
                "t": t,
                "mains": [round(x, 2) for x in mains],
                **{
                    cid: (a.current, a.source.text, a.phases, engine.chargers[cid].signaled)
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
                        if k == "fallback":
                            if alloc.fallback != v:
                                res.failures.append(f"t={t} site.fallback={alloc.fallback}, want {v}")
                        elif k == "mains_max":
                            if not max(mains) <= v + 1e-6:
                                res.failures.append(f"t={t} mains {mains} above {v}")
                        elif k == "rejected":
                            got = set(getattr(alloc, "rejected", ()))
                            if got != set(v):
                                res.failures.append(f"t={t} site.rejected={sorted(got)}, want {sorted(v)}")
                        else:
                            raise KeyError(f"unknown site expectation {k}")
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
                        actual = a.source.text
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
    watch.close_all(end + 1)
    res.overload_events = watch.events
    res.phase_switches = switches
    for ev2 in watch.events:
        allowed = max_over + (cap_grace if ev2.node == "capacity" else 0.0)
        if ev2.duration >= allowed:
            res.failures.append(ev2.describe())
    for cid, most in scenario.get("max_phase_switches", {}).items():
        if switches[cid] > most:
            res.failures.append(f"{cid} switched phases {switches[cid]} times, at most {most} allowed")
    return res


def all_scenarios() -> list[Path]:
    """Every scenario file."""
    return sorted([*SCENARIO_DIR.glob("*.yaml"), *SCENARIO_DIR.glob("*.json")])
