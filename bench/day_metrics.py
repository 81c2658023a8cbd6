"""Streaming metrics of one simulated day: energy, PV use, overloads, fairness, stops, switches.

`Recorder.sample(now)` is called after every `Engine.step(now)`; it reads the simulator's
physics (what really flowed) and the chargers' chain, never the allocator's intentions.
It also averages house load, PV and voltage per LP period for the perfect-foresight optimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from day_baselines import circuit_paths
from evpilot.config import AppConfig
from evpilot.control.engine import Engine
from evpilot.sim.site import NOMINAL_V, SimSite

# Below this many amps over a limit an excess is measurement noise, not an overload.
OVER_TOL_A = 0.05
# An overload run this long or longer is counted as an event (one tick plus the EV's reaction time).
LONG_EVENT_S = 6
# The goal: no overload event this long or longer.
EVENT_GOAL_S = 7
# A 3-phase charger competes on each phase within this many amps of its tightest headroom...
TIGHT_A = 1.0
# ... for at least this share of a fairness window.
TIGHT_SHARE = 0.8
# A charger drawing within this of what its car accepts is saturated (not competing for more).
SATURATED_A = 0.6
# A PWM change in the opposite direction to the previous one within this time is a reversal.
REVERSAL_S = 30
# Reversals where both changes are at least this big are oscillation, not quantization dither.
BIG_REVERSAL_A = 1.0


@dataclass(frozen=True, slots=True)
class OverEvent:
    """One run of consecutive seconds a limit was exceeded because of the chargers."""

    key: str
    start_s: int
    duration_s: int
    peak_a: float


@dataclass(slots=True)
class RunResult:
    """Everything measured in one run of one controller."""

    controller: str
    seconds: int
    wall_s: float = 0.0
    delivered_kwh: float = 0.0
    per_charger_kwh: dict[str, float] = field(default_factory=dict)
    # per charger, kWh delivered in each hour of the run (the last one may be partial)
    hourly_kwh: dict[str, list[float]] = field(default_factory=dict)
    pv_kwh: float = 0.0
    export_kwh: float = 0.0
    import_kwh: float = 0.0
    over_s: int = 0
    over_as: float = 0.0
    events: list[OverEvent] = field(default_factory=list)
    house_only_over_s: int = 0
    jain: list[float] = field(default_factory=list)
    unfair: list[tuple[float, int, dict[str, float]]] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    stops: dict[str, int] = field(default_factory=dict)
    switches: dict[str, int] = field(default_factory=dict)
    pwm_changes: dict[str, int] = field(default_factory=dict)
    reversals: dict[str, int] = field(default_factory=dict)
    big_reversals: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    period_s: float = 60.0
    house: list[tuple[float, float, float]] = field(default_factory=list)
    pv_a: list[float] = field(default_factory=list)
    volts: list[tuple[float, float, float]] = field(default_factory=list)
    house_sum: float = 0.0

    @property
    def self_consumption(self) -> float | None:
        """Share of the PV energy used on site."""
        return None if self.pv_kwh <= 1e-9 else 1.0 - self.export_kwh / self.pv_kwh

    @property
    def longest_s(self) -> int:
        """Longest single overload event (s)."""
        return max((e.duration_s for e in self.events), default=0)

    @property
    def long_events(self) -> int:
        """Overload events of at least `LONG_EVENT_S` seconds."""
        return self.events_at_least(LONG_EVENT_S)

    def events_at_least(self, seconds: int) -> int:
        """Overload events lasting `seconds` or longer."""
        return sum(1 for e in self.events if e.duration_s >= seconds)


class Recorder:
    """Samples a running site once per second and accumulates a `RunResult`."""

    def __init__(
        self,
        config: AppConfig,
        engine: Engine,
        sim: SimSite,
        start: float,
        result: RunResult,
        window_s: float = 900.0,
    ) -> None:
        self.engine = engine
        self.sim = sim
        self.start = start
        self.r = result
        self.window_s = window_s
        site = engine.site
        self.ids = list(engine.chargers)
        self.chargers = [engine.chargers[c] for c in self.ids]
        self.pilots = [sim.pilots[c] for c in self.ids]
        paths = circuit_paths(site)
        self.mains_limit = site.mains_limit
        self.capacity = site.capacity_limit
        self.circuits: list[tuple[str, float, list[int]]] = []
        for c in site.circuits:
            members = [
                i
                for i, ch in enumerate(self.chargers)
                if ch.config.circuit is not None and c.name in paths.get(ch.config.circuit, ())
            ]
            if members:
                self.circuits.append((c.name, c.limit, members))
        # fairness: each charger's nodes (0 = mains, i + 1 = self.circuits[i]) for its headroom
        self.nodes_of: list[tuple[int, ...]] = []
        for i in range(len(self.chargers)):
            self.nodes_of.append((0, *(j + 1 for j, (_, _, m) in enumerate(self.circuits) if i in m)))
        self.maps = [ch.config.phase_map for ch in self.chargers]
        self.runs: dict[str, tuple[int, int, float]] = {}
        # period averages
        self.period = result.period_s
        self.k = -1
        self.acc = [0.0] * 7
        self.acc_n = 0
        # per charger
        n = len(self.ids)
        self.charging = [False] * n
        self.phases = [ch.active_phases for ch in self.chargers]
        self.signaled = [0.0] * n
        self.starts = [0] * n
        self.stops = [0] * n
        self.switches = [0] * n
        self.pwm = [0] * n
        self.rev = [0] * n
        self.big_rev = [0] * n
        self.last_step = [0.0] * n
        self.last_dir = [0] * n
        self.last_change = [-1e18] * n
        self.sources: list[dict[str, int]] = [{} for _ in range(n)]
        # fairness windows
        self.leaf = [ch.config.circuit or "" for ch in self.chargers]
        self.prio = [ch.config.priority for ch in self.chargers]
        self.win_end = start + window_s
        self.win_as = [0.0] * n
        self.win_ok = [True] * n
        self.win_key: list[tuple[str, int, tuple[int, ...]] | None] = [None] * n
        self.win_tight = [[0, 0, 0] for _ in range(n)]
        self.win_n = 0
        self.energy0 = [p.energy_kwh for p in self.pilots]
        self.hour0 = list(self.energy0)
        self.hourly: list[list[float]] = [[] for _ in range(n)]
        self.import0 = sim.import_kwh

    def sample(self, now: float) -> None:
        """Take the physics and the chargers' state after the step at `now` (1 s steps)."""
        sim = self.sim
        r = self.r
        t = round(now - self.start)
        house = sim.house_currents
        mains = sim.mains_currents
        pv_a = sim.pv_w / (3 * NOMINAL_V)
        volts = sim.phase_v
        r.house_sum += house[0] + house[1] + house[2]
        # ---- period averages for the LP
        k = int((t - 1) // self.period)
        if k != self.k:
            self._flush()
            self.k = k
        a = self.acc
        a[0] += house[0]
        a[1] += house[1]
        a[2] += house[2]
        a[3] += pv_a
        a[4] += volts[0]
        a[5] += volts[1]
        a[6] += volts[2]
        self.acc_n += 1
        # ---- energy flows at nominal voltage, the same convention as the LP
        r.pv_kwh += pv_a * 3 * NOMINAL_V / 3.6e6
        net = mains[0] + mains[1] + mains[2]
        if net < 0:
            r.export_kwh += -net * NOMINAL_V / 3.6e6
        # ---- overloads the chargers are responsible for
        ev = [0.0, 0.0, 0.0]
        draws = []
        for p in self.pilots:
            d = p.mains_draw()
            draws.append(d)
            ev[0] += d[0]
            ev[1] += d[1]
            ev[2] += d[2]
        over: list[tuple[str, float]] = []
        lim = self.mains_limit
        head: list[Sequence[float]] = [(lim - mains[0], lim - mains[1], lim - mains[2])]
        house_over = False
        for p in range(3):
            excess = mains[p] - lim
            if excess > OVER_TOL_A:
                if mains[p] - ev[p] > lim:
                    house_over = True
                blame = min(excess, ev[p])
                if blame > OVER_TOL_A:
                    over.append((f"mains L{p + 1}", blame))
        for name, climit, members in self.circuits:
            room = [0.0, 0.0, 0.0]
            head.append(room)
            for p in range(3):
                load = 0.0
                for i in members:
                    load += draws[i][p]
                room[p] = climit - load
                if load - climit > OVER_TOL_A:
                    over.append((f"circuit:{name} L{p + 1}", load - climit))
        if self.capacity is not None:
            excess = net - self.capacity
            if excess > OVER_TOL_A:
                blame = min(excess, ev[0] + ev[1] + ev[2])
                if blame > OVER_TOL_A:
                    over.append(("capacity", blame))
        if house_over:
            r.house_only_over_s += 1
        if over:
            r.over_s += 1
        live = set()
        for key, blame in over:
            r.over_as += blame
            live.add(key)
            run = self.runs.get(key)
            self.runs[key] = (t, 1, blame) if run is None else (run[0], run[1] + 1, max(run[2], blame))
        for key in [k for k in self.runs if k not in live]:
            s0, dur, peak = self.runs.pop(key)
            r.events.append(OverEvent(key, s0, dur, peak))
        # ---- per charger: starts, stops, phase switches, PWM changes, fairness
        alloc = self.engine.last
        # the most any charger of a leaf circuit draws on each mains phase (for `_tight`)
        top: dict[str, list[float]] = {}
        for i, d in enumerate(draws):
            peak = top.setdefault(self.leaf[i], [0.0, 0.0, 0.0])
            for p in range(3):
                if d[p] > peak[p]:
                    peak[p] = d[p]
        win_close = now >= self.win_end
        self.win_n += 1
        for i, ch in enumerate(self.chargers):
            pilot = self.pilots[i]
            car = pilot.car
            drawn = max(pilot.currents)
            charging = drawn > 0.5
            if charging and not self.charging[i]:
                self.starts[i] += 1
            elif self.charging[i] and not charging and car is not None and car.wants_charge:
                self.stops[i] += 1
            self.charging[i] = charging
            if ch.active_phases != self.phases[i]:
                self.switches[i] += 1
                self.phases[i] = ch.active_phases
            if ch.signaled != self.signaled[i]:
                self.pwm[i] += 1
                step = ch.signaled - self.signaled[i]
                way = 1 if step > 0 else -1
                if way == -self.last_dir[i] and t - self.last_change[i] <= REVERSAL_S:
                    self.rev[i] += 1
                    if min(abs(step), abs(self.last_step[i])) >= BIG_REVERSAL_A:
                        self.big_rev[i] += 1
                self.last_step[i] = step
                self.last_dir[i] = way
                self.last_change[i] = t
                self.signaled[i] = ch.signaled
            if alloc is not None and car is not None and car.wants_charge:
                src = alloc.chargers[self.ids[i]].source.text
                self.sources[i][src] = self.sources[i].get(src, 0) + 1
            # fairness: only chargers that want more than they get compete for a share
            if self.win_ok[i]:
                if car is None or not car.wants_charge or ch.demand() != 2:
                    self.win_ok[i] = False
                else:
                    accept = min(car.spec.max_current, car.taper_limit(), ch.own_limit(now)[0])
                    if drawn >= accept - SATURATED_A:
                        self.win_ok[i] = False
                    else:
                        one = ch.config.phases == 1 or ch.active_phases == 1 or car.spec.phases == 1
                        used = self.maps[i].used(1 if one else 3)
                        key = (self.leaf[i], self.prio[i], used)
                        if self.win_key[i] is None:
                            self.win_key[i] = key
                        elif self.win_key[i] != key:
                            self.win_ok[i] = False
                        if not one:
                            self._tight(i, head, draws[i], top[self.leaf[i]])
            self.win_as[i] += drawn
        if win_close:
            self._close_window()
        if t % 3600 == 0:
            self._close_hour()

    def _close_hour(self) -> None:
        for i, p in enumerate(self.pilots):
            e = p.energy_kwh
            self.hourly[i].append(e - self.hour0[i])
            self.hour0[i] = e

    def _tight(
        self, i: int, head: list[Sequence[float]], mine: Sequence[float], peak: Sequence[float]
    ) -> None:
        """Count the phases that bind charger `i`: (nearly) as constrained as its tightest, where it draws as
        much as any charger of its leaf circuit if there is such a phase (max-min fairness: below another
        charger on a full phase it is held by another full phase, where it gets the most)."""
        room = [1e9, 1e9, 1e9]
        for node in self.nodes_of[i]:
            h = head[node]
            for p in range(3):
                if h[p] < room[p]:
                    room[p] = h[p]
        low = min(room) + TIGHT_A
        full = [p for p in range(3) if room[p] <= low]
        own = [p for p in full if mine[p] >= peak[p] - TIGHT_A]
        tight = self.win_tight[i]
        for p in own or full:
            tight[p] += 1

    def _close_window(self) -> None:
        # Chargers compete on a mains phase they share: a 1-phase one on its phase, a 3-phase one
        # on the phases where it is (nearly) as constrained as on its tightest, so a 3-phase
        # charger taking more than a 1-phase one on a phase that binds both lowers the index,
        # while a 1-phase charger on a phase with room to spare may get more than 3-phase ones.
        groups: dict[tuple[str, int, int], list[int]] = {}
        need = TIGHT_SHARE * self.win_n
        for i in range(len(self.ids)):
            key = self.win_key[i]
            if not self.win_ok[i] or key is None:
                continue
            leaf, prio, used = key
            for p in used:
                if len(used) == 1 or self.win_tight[i][p] >= need:
                    groups.setdefault((leaf, prio, p), []).append(i)
        seen: set[tuple[int, ...]] = set()
        for members in groups.values():
            if tuple(members) in seen:
                continue
            seen.add(tuple(members))
            xs = [self.win_as[i] for i in members]
            total = sum(xs)
            if len(xs) >= 2 and total > 1e-6:
                j = total * total / (len(xs) * sum(x * x for x in xs))
                self.r.jain.append(j)
                if j < 0.99:
                    # the window's start (s into the run) and each member's mean current
                    start = round(self.win_end - self.window_s - self.start)
                    means = {self.ids[i]: round(self.win_as[i] / self.window_s, 1) for i in members}
                    self.r.unfair.append((j, start, means))
                    self.r.unfair.sort(key=lambda u: u[0])
                    del self.r.unfair[5:]
        n = len(self.ids)
        self.win_as = [0.0] * n
        self.win_ok = [True] * n
        self.win_key = [None] * n
        self.win_tight = [[0, 0, 0] for _ in range(n)]
        self.win_n = 0
        self.win_end += self.window_s

    def _flush(self) -> None:
        if self.acc_n:
            a, n = self.acc, float(self.acc_n)
            self.r.house.append((a[0] / n, a[1] / n, a[2] / n))
            self.r.pv_a.append(a[3] / n)
            self.r.volts.append((a[4] / n, a[5] / n, a[6] / n))
        self.acc = [0.0] * 7
        self.acc_n = 0

    def finish(self) -> RunResult:
        """Close open events and periods and fill in the totals."""
        self._flush()
        r = self.r
        for key, (s0, dur, peak) in self.runs.items():
            r.events.append(OverEvent(key, s0, dur, peak))
        self.runs.clear()
        r.import_kwh = self.sim.import_kwh - self.import0
        if r.seconds % 3600:
            self._close_hour()
        for i, cid in enumerate(self.ids):
            kwh = self.pilots[i].energy_kwh - self.energy0[i]
            r.per_charger_kwh[cid] = kwh
            r.hourly_kwh[cid] = self.hourly[i]
            r.starts[cid] = self.starts[i]
            r.stops[cid] = self.stops[i]
            r.switches[cid] = self.switches[i]
            r.pwm_changes[cid] = self.pwm[i]
            r.reversals[cid] = self.rev[i]
            r.big_reversals[cid] = self.big_rev[i]
            r.sources[cid] = self.sources[i]
        r.delivered_kwh = sum(r.per_charger_kwh.values())
        return r
