"""Perfect-foresight bounds of a simulated day: an LP and a MIN-aware MILP, solved with HiGHS.

Variables are the chargers' per-phase currents averaged over each period (one per car session,
phase configuration and period). Constraints, with the house load and PV known in advance:
per-phase mains and circuit limits, the capacity limit (sum of phases), the solar budget of
chargers in solar mode (surplus + IMPORT), each car's availability window, current limit,
energy need and battery taper. Averaging within a period and leaving out MIN and pacing make the
LP a relaxation: no controller that respects the limits every second can beat it, so the ratio
controller/LP is a lower bound on how close to the optimum the controller is.

**MIN-aware bound** (`min_aware=True`, a MILP, `scipy.optimize.milp`): the pilot cannot signal
less than MIN, so a charger delivers 0 or at least MIN. Per session, period and phase
configuration a binary says whether the charger is on; on means MIN ≤ current ≤ cap (scaled by
the share of the period the car is there), and a switching charger is in at most one
configuration per period. A car near full accepts less than MIN (the battery's taper): the
current it draws in that state is a separate variable free of the MIN rule, allowed only in the
periods after the energy delivered has reached the point where the taper falls below MIN (a
monotone binary per period) and in total at most the energy from that point to the target. The model
assumes a controller holds a charger on or off for a whole period (evpilot's shortage pause is
60 s, its solar start and STOP timers longer); with that, every schedule such a controller can
run is feasible here and the MILP is an upper bound that is tighter than the LP. If HiGHS stops
at its time limit, its dual bound (an upper bound on the MILP optimum) is reported with the gap.

**Solar grid allowance** (both bounds): a charger in `solar` mode keeps MIN from the grid during
its start grace (`site.solar.start_grace_s`) and while its STOP timer runs (`site.solar.stop_min`)
although the surplus does not cover it. The bounds get the same: per charger, extra grid import
of at most MIN on each phase it draws on, and in total at most MIN × phases × (start grace +
STOP timer) ampere-seconds per start, with the number of starts taken from the measured run
(`solar_starts`, at least one per session). `stop_min: 0` (never stop) leaves the total open.
In the MILP the import flows only in periods where the charger is held at MIN (a binary), as in
the grace and the STOP timer: the grid never tops up a solar share that is already above MIN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from day_baselines import circuit_paths
from evpilot.config import AppConfig
from evpilot.sim.ev import CHARGE_EFFICIENCY, TAPER_START_SOC
from evpilot.sim.site import NOMINAL_V

# The simulated battery tapers to this floor (A) however full it is.
TAPER_FLOOR_A = 2.0
# A relaxed current this small is no current (solver tolerance).
_ZERO = 1e-7


@dataclass(frozen=True, slots=True)
class CarSession:
    """One car's stay at one charger, in seconds from the start of the run."""

    charger: str
    at_s: float
    unplug_s: float
    battery_kwh: float
    soc: float
    target_soc: float
    max_current: float
    phases: int

    @property
    def need_kwh(self) -> float:
        """Energy at the charger that brings the battery to its target."""
        return max(0.0, self.target_soc - self.soc) / 100.0 * self.battery_kwh / CHARGE_EFFICIENCY

    def below_min_kwh(self, min_current: float) -> float:
        """Energy at the charger delivered while the taper keeps the car below `min_current`."""
        if self.target_soc <= TAPER_START_SOC:
            return 0.0
        # taper_limit = max(2, max_current * (target - soc) / (100 - TAPER_START_SOC)) above 80 %
        span = 100.0 - TAPER_START_SOC
        soc_min = max(TAPER_START_SOC, self.target_soc - span * min_current / self.max_current)
        soc0 = max(self.soc, soc_min)
        return max(0.0, self.target_soc - soc0) / 100.0 * self.battery_kwh / CHARGE_EFFICIENCY


# Per session: (period, [(current column, kWh per A)], share of the period the car is there).
_Periods = list[tuple[int, list[tuple[int, float]], float]]


def jain_pair_ratio(jain: float) -> float:
    """The least ratio a/b (a <= b) two values may have for their Jain index to reach `jain`."""
    # (1 + t)^2 / (2 (1 + t^2)) = J  <=>  (2J - 1) t^2 - 2 t + (2J - 1) = 0, the root below 1
    c = 2.0 * jain - 1.0
    return (1.0 - math.sqrt(max(0.0, 1.0 - c * c))) / c


@dataclass(frozen=True, slots=True)
class LpResult:
    """The optimum of one objective (for a MILP stopped early: its best bound and the gap)."""

    value: float
    per_charger_kwh: dict[str, float]
    status: str
    solve_s: float
    variables: int
    rows: int
    integers: int = 0
    optimal: bool = True
    incumbent: float = math.nan
    gap: float = 0.0
    # the schedule's kWh per charger and period (the best schedule for a MILP)
    per_period_kwh: dict[str, list[float]] = field(default_factory=dict)
    period_s: float = 0.0


def _modes(config: AppConfig, cid: str, car_phases: int) -> tuple[tuple[int, ...], ...]:
    cfg = next(c for c in config.chargers if c.id == cid)
    pmap = cfg.core().phase_map
    mode = cfg.mode or config.site.mode
    one = pmap.used(1)
    if cfg.phases == 1 or car_phases == 1:
        return (one,)
    sw = cfg.contactor2
    if sw == "always_1p" or (sw == "solar_1p" and mode == "solar"):
        return (one,)
    if sw == "auto":
        return (one, pmap.used(3))
    return (pmap.used(3),)


class _Builder:
    def __init__(self) -> None:
        self.n = 0
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.cost: list[float] = []
        self.integer: list[int] = []
        self.ub_r: list[int] = []
        self.ub_c: list[int] = []
        self.ub_v: list[float] = []
        self.ub_b: list[float] = []
        self.eq_r: list[int] = []
        self.eq_c: list[int] = []
        self.eq_v: list[float] = []
        self.eq_b: list[float] = []
        # MIN switches: (on binary, current column, taper tail column or -1, MIN × availability)
        self.on: list[tuple[int, int, int, float]] = []
        # solar "held at MIN from the grid" binaries: (binary, import column)
        self.held: list[tuple[int, int]] = []
        self.fair = False
        # the period of every current column
        self.period: dict[int, int] = {}

    def var(self, hi: float, cost: float = 0.0, integer: bool = False) -> int:
        self.lo.append(0.0)
        self.hi.append(hi)
        self.cost.append(cost)
        self.integer.append(1 if integer else 0)
        self.n += 1
        return self.n - 1

    def le(self, terms: Sequence[tuple[int, float]], rhs: float) -> None:
        row = len(self.ub_b)
        for col, val in terms:
            self.ub_r.append(row)
            self.ub_c.append(col)
            self.ub_v.append(val)
        self.ub_b.append(rhs)

    def eq(self, terms: Sequence[tuple[int, float]], rhs: float) -> None:
        row = len(self.eq_b)
        for col, val in terms:
            self.eq_r.append(row)
            self.eq_c.append(col)
            self.eq_v.append(val)
        self.eq_b.append(rhs)

    @property
    def integers(self) -> int:
        return sum(self.integer)

    def solve(self) -> tuple[Any, str, float]:
        # scipy is only in the `bench` extra: import it when an LP is actually solved.
        import numpy as np
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix

        t0 = time.perf_counter()
        a_ub = coo_matrix((self.ub_v, (self.ub_r, self.ub_c)), shape=(len(self.ub_b), self.n)).tocsr()
        a_eq = None
        b_eq = None
        if self.eq_b:
            a_eq = coo_matrix((self.eq_v, (self.eq_r, self.eq_c)), shape=(len(self.eq_b), self.n)).tocsr()
            b_eq = np.array(self.eq_b)
        res = linprog(
            np.array(self.cost),
            A_ub=a_ub,
            b_ub=np.array(self.ub_b),
            A_eq=a_eq,
            b_eq=b_eq,
            bounds=np.column_stack([self.lo, self.hi]),
            method="highs",
        )
        wall = time.perf_counter() - t0
        return (res.x if res.status == 0 else None), str(res.message), wall

    def solve_milp(
        self,
        time_limit: float,
        fix: Mapping[int, float] | None = None,
        relax: bool = False,
        log: bool = False,
    ) -> tuple[Any, str, float, float, bool]:
        """Solution (or None), message, wall s, best bound of the minimum, proven optimal.

        `fix` pins binaries to 0 or 1; `relax` drops integrality (the LP relaxation of the MILP).
        """
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix

        t0 = time.perf_counter()
        rows = []
        a_ub = coo_matrix((self.ub_v, (self.ub_r, self.ub_c)), shape=(len(self.ub_b), self.n)).tocsr()
        rows.append(LinearConstraint(a_ub, -np.inf, np.array(self.ub_b)))
        if self.eq_b:
            a_eq = coo_matrix((self.eq_v, (self.eq_r, self.eq_c)), shape=(len(self.eq_b), self.n)).tocsr()
            rows.append(LinearConstraint(a_eq, np.array(self.eq_b), np.array(self.eq_b)))
        lo = np.array(self.lo)
        hi = np.array(self.hi)
        for col, value in (fix or {}).items():
            lo[col] = hi[col] = value
        res = milp(
            np.array(self.cost),
            integrality=np.zeros(self.n) if relax else np.array(self.integer),
            bounds=Bounds(lo, hi),
            constraints=rows,
            options={"time_limit": max(1.0, time_limit), "disp": log},
        )
        wall = time.perf_counter() - t0
        bound = getattr(res, "mip_dual_bound", None)
        if relax or bound is None or not math.isfinite(bound):
            bound = res.fun if res.status == 0 else -math.inf
        return res.x, str(res.message), wall, float(bound), res.status == 0

    def rounding(self, x: Any, ones: bool = True) -> dict[int, float]:
        """Binaries a relaxed solution settles: off where nothing flows, on where MIN or more does.

        The rest stay free. Every setting keeps the relaxed point with its sub-MIN currents
        set to 0 feasible (all node rows are ≤ with non-negative coefficients), so the MILP
        restricted to the free binaries always has a schedule. With fairness rows that is no
        longer so (a current set to 0 can leave the other car above its share): `ones=False`
        then settles only the chargers that are off, which keeps "all off" feasible.
        """
        fix: dict[int, float] = {}
        for z, col, w, low in self.on:
            tail = float(x[w]) if w >= 0 else 0.0
            if x[col] <= _ZERO and tail <= _ZERO:
                fix[z] = 0.0
            elif ones and x[col] >= low - _ZERO:
                fix[z] = 1.0
        for h, imp in self.held:
            if x[imp] <= _ZERO:
                fix[h] = 0.0
        return fix


def optimum(
    config: AppConfig,
    sessions: Sequence[CarSession],
    house: Sequence[tuple[float, float, float]],
    pv_a: Sequence[float],
    volts: Sequence[tuple[float, float, float]],
    period_s: float,
    seconds: int,
    objective: str,
    min_aware: bool = False,
    time_limit: float = 180.0,
    solar_starts: Mapping[str, int] | None = None,
    gap_goal: float = 1e-4,
    log: bool = False,
    fair_ratio: float | None = None,
    fair_window_s: float = 900.0,
) -> LpResult:
    """Best energy to the cars (`objective="energy"`, kWh) or PV self-consumption ("pv", share).

    `min_aware` solves the MILP (energy only) in `time_limit` s at most (see `_min_aware`), and
    stops once bound and best schedule are within `gap_goal`; `log` prints each step and HiGHS's
    log; `solar_starts` is the measured number of starts per solar-mode charger (grid allowance).
    `fair_ratio` adds the fairness rows of `_fairness` (windows of `fair_window_s`).
    """
    if min_aware and objective != "energy":
        raise ValueError("the MIN-aware bound is for the energy objective")
    site = config.site
    periods = len(house)
    lengths = [min(period_s, seconds - k * period_s) for k in range(periods)]
    b = _Builder()
    pv_cost = objective == "pv"
    # per period: (col, mains phases, leaf circuit) for node/capacity rows; solar terms separately
    by_period: list[list[tuple[int, tuple[int, ...], str]]] = [[] for _ in range(periods)]
    solar_terms: list[list[tuple[int, float]]] = [[] for _ in range(periods)]
    energy_cols: dict[str, list[tuple[int, float]]] = {}
    # solar grid allowance: per charger its import columns (col, seconds) and sessions
    allowance: dict[str, list[tuple[int, float]]] = {}
    solar_sessions: dict[str, int] = {}
    grace_s = site.solar.start_grace_s + site.solar.stop_min * 60.0
    chargers = {c.id: c for c in config.chargers}
    fair_sessions: list[tuple[CarSession, tuple[tuple[int, ...], ...], float, _Periods]] = []
    for s in sessions:
        cfg = chargers[s.charger]
        mode = cfg.mode or site.mode
        if mode == "off" or s.need_kwh <= 0:
            continue
        modes = _modes(config, s.charger, s.phases)
        cap = min(cfg.max_current, s.max_current)
        mn = cfg.min_current
        taper = s.target_soc > TAPER_START_SOC
        solar = mode == "solar"
        if solar:
            solar_sessions[s.charger] = solar_sessions.get(s.charger, 0) + 1
        tail_kwh = s.below_min_kwh(mn) if min_aware else 0.0
        tail: list[tuple[int, float]] = []
        # energy already delivered when the taper falls below MIN, the most that could be by now
        full_kwh = s.need_kwh - tail_kwh
        reach_kwh = 0.0
        prev_q: int | None = None
        k0 = max(0, int(s.at_s // period_s))
        k1 = min(periods, math.ceil(s.unplug_s / period_s))
        need: list[tuple[int, float]] = []
        per_period: list[tuple[int, list[tuple[int, float]], float]] = []
        prev_y: int | None = None
        prev_e: list[tuple[int, float]] = []
        for k in range(k0, k1):
            lo = k * period_s
            hi = lo + lengths[k]
            avail = max(0.0, min(hi, s.unplug_s) - max(lo, s.at_s)) / lengths[k]
            if avail <= 0:
                continue
            cols: list[int] = []
            ons: list[int] = []
            this_e: list[tuple[int, float]] = []
            draws: list[tuple[int, float]] = []
            reach_kwh += cap * avail * max(sum(volts[k][p] for p in ph) for ph in modes) * lengths[k] / 3.6e6
            q: int | None = None
            if tail_kwh > 0 and reach_kwh >= full_kwh:
                # the car may be past the point where it accepts less than MIN (once past, it stays)
                q = b.var(1.0, integer=True)
                if prev_q is not None:
                    b.le([(prev_q, 1.0), (q, -1.0)], 0.0)
                prev_q = q
            for ph in modes:
                ekw = sum(volts[k][p] for p in ph) * lengths[k] / 3.6e6
                col = b.var(cap * avail, 0.0 if pv_cost else -ekw)
                b.period[col] = k
                cols.append(col)
                this_e.append((col, ekw))
                need.append((col, ekw))
                by_period[k].append((col, ph, cfg.circuit or ""))
                draws.append((col, float(len(ph))))
                if solar:
                    solar_terms[k].append((col, float(len(ph))))
                if min_aware:
                    # on: MIN <= x <= cap; off: x = 0; except the taper's sub-MIN tail (w)
                    z = b.var(1.0, integer=True)
                    ons.append(z)
                    w: int | None = None
                    if q is not None:
                        w = b.var(min(cap, mn) * avail)
                        b.le([(w, 1.0), (q, -min(cap, mn) * avail)], 0.0)
                        tail.append((w, ekw))
                    b.on.append((z, col, -1 if w is None else w, mn * avail))
                    b.le([(col, -1.0), (z, mn * avail), *(((w, -1.0),) if w is not None else ())], 0.0)
                    b.le([(col, 1.0), (z, -cap * avail), *(((w, -1.0),) if w is not None else ())], 0.0)
            if len(cols) > 1:
                b.le([(c, 1.0) for c in cols], cap * avail)
                if ons:
                    b.le([(z, 1.0) for z in ons], 1.0)
            if solar:
                # grid import beyond the solar budget: only while drawing, at most MIN per phase
                widest = max(len(ph) for ph in modes)
                imp = b.var(widest * mn * avail)
                b.le([(imp, 1.0), *((c, -n) for c, n in draws)], 0.0)
                if ons:
                    on_terms = [(z, -len(ph) * mn * avail) for z, ph in zip(ons, modes, strict=True)]
                    b.le([(imp, 1.0), *on_terms], 0.0)
                    # and only while the charger is held at MIN (start grace, STOP timer): a solar
                    # charger above MIN runs on the surplus alone
                    held = b.var(1.0, integer=True)
                    b.held.append((held, imp))
                    b.le([(imp, 1.0), (held, -widest * mn * avail)], 0.0)
                    for c in cols:
                        b.le([(c, 1.0), (held, max(0.0, cap - mn) * avail)], cap * avail)
                solar_terms[k].append((imp, -1.0))
                # counted in seconds at MIN on every phase
                allowance.setdefault(s.charger, []).append((imp, lengths[k] / (widest * mn)))
            if taper:
                # energy delivered before this period, as a chain of cumulative variables
                y = b.var(math.inf)
                terms = [(y, 1.0)]
                if prev_y is not None:
                    terms.append((prev_y, -1.0))
                terms += [(c, -e) for c, e in prev_e]
                b.eq(terms, 0.0)
                slope = s.max_current * 100.0 * CHARGE_EFFICIENCY / s.battery_kwh / (100.0 - TAPER_START_SOC)
                rhs = TAPER_FLOOR_A + s.max_current * (100.0 - s.soc) / (100.0 - TAPER_START_SOC)
                b.le([*((c, 1.0) for c in cols), (y, avail * slope)], avail * rhs)
                if q is not None:
                    # past that point by the end of this period
                    b.le([(y, -1.0), *((c, -e) for c, e in this_e), (q, full_kwh)], 0.0)
                prev_y = y
            prev_e = this_e
            if fair_ratio is not None:
                per_period.append((k, this_e, avail))
        if fair_ratio is not None and per_period:
            fair_sessions.append((s, modes, cap, per_period))
        if need:
            b.le(need, s.need_kwh)
            energy_cols.setdefault(s.charger, []).extend(need)
        if tail:
            b.le(tail, tail_kwh)
    if fair_ratio is not None:
        # the most any charger could draw per phase: the mains phase with the most room
        room = [site.mains_limit - min(h) + pv for h, pv in zip(house, pv_a, strict=True)]
        _fairness(b, fair_sessions, lengths, fair_ratio, fair_window_s, min_aware, room)
    if site.solar.stop_min > 0:
        starts = solar_starts or {}
        for cid, terms in allowance.items():
            # seconds at MIN × phases from the grid
            count = max(starts.get(cid, 0), solar_sessions.get(cid, 1))
            b.le(terms, count * grace_s)
    paths = circuit_paths(config.site_core())
    climits = {c.name: c.limit for c in site.circuits}
    export_cols: list[int] = []
    for k in range(periods):
        h, pv = house[k], pv_a[k]
        base = [h[p] - pv for p in range(3)]
        # mains and circuits, per phase
        nodes: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for col, ph, leaf in by_period[k]:
            chain = ("", *(paths.get(leaf, ()) if leaf else ()))
            for node in chain:
                for p in ph:
                    nodes.setdefault((node, p), []).append((col, 1.0))
        for (node, p), terms in nodes.items():
            limit = site.mains_limit - base[p] if node == "" else climits[node]
            b.le(terms, max(0.0, limit))
        everything = [(col, float(len(ph))) for col, ph, _ in by_period[k]]
        if site.capacity_limit is not None and everything:
            b.le(everything, max(0.0, site.capacity_limit - sum(base)))
        if solar_terms[k]:
            surplus = -sum(base) + site.solar.max_import
            b.le(solar_terms[k], max(0.0, surplus))
        if pv_cost:
            # export_k >= -(net import) in kWh at nominal voltage, the recorder's convention
            scale = NOMINAL_V * lengths[k] / 3.6e6
            ex = b.var(math.inf, 1.0)
            export_cols.append(ex)
            b.le([(ex, -1.0), *((c, -w * scale) for c, w in everything)], sum(base) * scale)
    if b.n == 0:
        return LpResult(0.0, {}, "empty", 0.0, 0, 0)
    rows = len(b.ub_b) + len(b.eq_b)
    if min_aware:
        result = _min_aware(b, energy_cols, rows, time_limit, gap_goal, log, periods)
        return replace(result, period_s=period_s)
    x, status, wall = b.solve()
    if x is None:
        return LpResult(math.nan, {}, status, wall, b.n, rows)
    per = _energy(x, energy_cols)
    sched = _per_period(x, energy_cols, b.period, periods)
    if pv_cost:
        pv_kwh = sum(3 * pv_a[k] * NOMINAL_V * lengths[k] / 3.6e6 for k in range(periods))
        exported = float(sum(x[c] for c in export_cols))
        value = math.nan if pv_kwh <= 1e-9 else 1.0 - exported / pv_kwh
        return LpResult(value, per, status, wall, b.n, rows, per_period_kwh=sched, period_s=period_s)
    total = sum(per.values())
    return LpResult(
        total, per, status, wall, b.n, rows, incumbent=total, per_period_kwh=sched, period_s=period_s
    )


def _energy(x: Any, energy_cols: Mapping[str, list[tuple[int, float]]]) -> dict[str, float]:
    return {cid: float(sum(x[c] * e for c, e in cols)) for cid, cols in energy_cols.items()}


def _per_period(
    x: Any, energy_cols: Mapping[str, list[tuple[int, float]]], period: Mapping[int, int], periods: int
) -> dict[str, list[float]]:
    """Each charger's kWh per period in the schedule `x`."""
    out: dict[str, list[float]] = {}
    for cid, cols in energy_cols.items():
        row = out[cid] = [0.0] * periods
        for c, e in cols:
            row[period[c]] += float(x[c]) * e
    return out


def _min_aware(
    b: _Builder,
    energy_cols: Mapping[str, list[tuple[int, float]]],
    rows: int,
    time_limit: float,
    gap_goal: float,
    log: bool,
    periods: int,
) -> LpResult:
    """The MILP's bound and best schedule: relaxation, rounding, then HiGHS on the whole MILP.

    1. The LP relaxation (binaries in [0, 1]) gives a first upper bound.
    2. Rounding it (`_Builder.rounding`) and solving the MILP over the binaries it leaves free
       gives a MIN-respecting schedule, a lower bound on the MILP's optimum.
    3. If the two differ by more than `gap_goal`, HiGHS solves the whole MILP in the time left;
       its dual bound replaces the relaxation's if lower, its schedule the rounded one if better.
    The value is the best upper bound; `gap` is (bound - best schedule) / bound, 0 when proven.
    """
    t0 = time.perf_counter()

    def say(text: str) -> None:
        if log:
            print(f"    MILP: {text}  [{time.perf_counter() - t0:.1f} s]", flush=True)

    x, status, _, relax_bound, ok = b.solve_milp(time_limit, relax=True)
    if not ok or x is None:
        return LpResult(math.nan, {}, status, time.perf_counter() - t0, b.n, rows, b.integers, False)
    bound = -relax_bound
    say(f"LP relaxation {bound:.2f} kWh ({b.integers} binaries)")
    fix = b.rounding(x, ones=not b.fair)
    left = time_limit - (time.perf_counter() - t0)
    best: Any = None
    best_kwh = -math.inf
    xr, status_r, _, _, _ = b.solve_milp(max(1.0, left / 2), fix=fix, log=log)
    if xr is not None:
        best, best_kwh = xr, sum(_energy(xr, energy_cols).values())
    say(f"rounding ({b.integers - len(fix)} binaries left free): schedule {best_kwh:.2f} kWh ({status_r})")
    status = status_r
    optimal = best is not None and bound - best_kwh <= gap_goal * max(bound, 1e-9)
    left = time_limit - (time.perf_counter() - t0)
    if not optimal and left >= 1.0:
        xm, status, _, dual, proven = b.solve_milp(left, log=log)
        bound = min(bound, -dual) if math.isfinite(dual) else bound
        if xm is not None:
            kwh = sum(_energy(xm, energy_cols).values())
            if kwh > best_kwh:
                best, best_kwh = xm, kwh
        optimal = proven or (best is not None and bound - best_kwh <= gap_goal * max(bound, 1e-9))
        say(f"whole MILP: bound {bound:.2f} kWh, schedule {best_kwh:.2f} kWh ({status})")
    per = _energy(best, energy_cols) if best is not None else {}
    sched = _per_period(best, energy_cols, b.period, periods) if best is not None else {}
    incumbent = best_kwh if best is not None else math.nan
    gap = math.inf if best is None or bound <= 1e-9 else max(0.0, bound - incumbent) / bound
    wall = time.perf_counter() - t0
    return LpResult(bound, per, status, wall, b.n, rows, b.integers, optimal, incumbent, gap, sched)


def _fairness(
    b: _Builder,
    fair_sessions: Sequence[tuple[CarSession, tuple[tuple[int, ...], ...], float, _Periods]],
    lengths: Sequence[float],
    ratio: float,
    window_s: float,
    integer: bool,
    room: Sequence[float],
) -> None:
    """Two cars that compete on a mains phase for a whole window get per-phase A·s within `ratio`.

    For two chargers, `ratio = jain_pair_ratio(J)` makes Jain's index of the window at least J.
    A car is exempt from a window (binary) if by its end the car is past 80 % (the taper, where it
    may accept less than its share), or if in one of its periods it draws its whole cap (it took
    what it could; only in periods where the mains phase with the most room, `room`, has room for
    that cap); these exemptions are wider than the recorder's, so the result is an upper
    bound on the energy of schedules fair in every window. Without `integer` the exemptions are
    continuous (a weaker relaxation, still an upper bound).
    """
    b.fair = True
    period_s = lengths[0]
    per_window = max(1, round(window_s / period_s))
    entries: dict[tuple[int, int], tuple[int, list[tuple[int, float]]]] = {}
    by_window: dict[int, list[tuple[int, tuple[int, ...], float]]] = {}
    for si, (s, modes, cap, periods) in enumerate(fair_sessions):
        phases = tuple(sorted({p for ph in modes for p in ph}))
        taper_kwh = max(0.0, TAPER_START_SOC - s.soc) / 100.0 * s.battery_kwh / CHARGE_EFFICIENCY
        cum: int | None = None
        by_k = {k: (cols, avail) for k, cols, avail in periods}
        first = min(by_k) // per_window
        last = max(by_k) // per_window
        for w in range(first, last + 1):
            ks = range(w * per_window, min(len(lengths), (w + 1) * per_window))
            energy = [(c, e) for k in ks if k in by_k for c, e in by_k[k][0]]
            # energy delivered by the end of the window
            y = b.var(math.inf)
            b.eq([(y, 1.0), *(((cum, -1.0),) if cum is not None else ()), *((c, -e) for c, e in energy)], 0.0)
            cum = y
            whole = all(k in by_k and by_k[k][1] >= 1.0 - 1e-9 for k in ks)
            if not whole:
                continue
            exempt = b.var(1.0, integer=integer)
            past = b.var(1.0, integer=integer)
            b.le([(past, taper_kwh), (y, -1.0)], 0.0)
            sat_terms = [(past, -1.0)]
            for k in ks:
                cols, avail = by_k[k]
                if cap > room[k] + 1e-9:
                    continue  # no node has room for the car's whole cap: it cannot take all it could
                full = b.var(1.0, integer=integer)
                b.le([(full, cap * avail), *((c, -1.0) for c, _ in cols)], 0.0)
                sat_terms.append((full, -1.0))
            b.le([(exempt, 1.0), *sat_terms], 0.0)
            # per-phase ampere-seconds in the window
            amps = [(c, lengths[k]) for k in ks for c, _ in by_k[k][0]]
            entries[(si, w)] = (exempt, amps)
            by_window.setdefault(w, []).append((si, phases, cap * window_s))
    for w, group in by_window.items():
        for a, pa, _ in group:
            for c, pc, big in group:
                same = fair_sessions[a][0].charger == fair_sessions[c][0].charger
                if a == c or same or not set(pa) & set(pc):
                    continue
                ea, amps_a = entries[(a, w)]
                ec, amps_c = entries[(c, w)]
                # A_a >= ratio * A_c unless one of them is exempt
                b.le([*((col, ratio * t) for col, t in amps_c), *((col, -t) for col, t in amps_a),
                      (ea, -ratio * big), (ec, -ratio * big)], 0.0)  # fmt: skip
