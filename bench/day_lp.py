"""Perfect-foresight optimum of a simulated day: a linear program solved with HiGHS.

Variables are the chargers' per-phase currents averaged over each period (one per car session,
phase configuration and period). Constraints, with the house load and PV known in advance:
per-phase mains and circuit limits, the capacity limit (sum of phases), the solar budget of
chargers in solar mode (surplus + IMPORT), each car's availability window, current limit,
energy need and battery taper. Averaging within a period and leaving out MIN and pacing make it
a relaxation: no controller that respects the limits every second can beat it, so the ratio
controller/LP is a lower bound on how close to the optimum the controller is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from day_baselines import circuit_paths
from evpilot.config import AppConfig
from evpilot.sim.ev import CHARGE_EFFICIENCY, TAPER_START_SOC
from evpilot.sim.site import NOMINAL_V

# The simulated battery tapers to this floor (A) however full it is.
TAPER_FLOOR_A = 2.0


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


@dataclass(frozen=True, slots=True)
class LpResult:
    """The optimum of one objective."""

    value: float
    per_charger_kwh: dict[str, float]
    status: str
    solve_s: float
    variables: int
    rows: int


def _modes(config: AppConfig, cid: str, car_phases: int) -> tuple[tuple[int, ...], ...]:
    cfg = next(c for c in config.chargers if c.id == cid)
    mode = cfg.mode or config.site.mode
    if cfg.phases == 1:
        return ((cfg.phase - 1,),)
    if car_phases == 1:
        return ((0,),)
    sw = cfg.contactor2
    if sw == "always_1p" or (sw == "solar_1p" and mode == "solar"):
        return ((0,),)
    if sw == "auto":
        return ((0,), (0, 1, 2))
    return ((0, 1, 2),)


class _Builder:
    def __init__(self) -> None:
        self.n = 0
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.cost: list[float] = []
        self.ub_r: list[int] = []
        self.ub_c: list[int] = []
        self.ub_v: list[float] = []
        self.ub_b: list[float] = []
        self.eq_r: list[int] = []
        self.eq_c: list[int] = []
        self.eq_v: list[float] = []
        self.eq_b: list[float] = []

    def var(self, hi: float, cost: float = 0.0) -> int:
        self.lo.append(0.0)
        self.hi.append(hi)
        self.cost.append(cost)
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


def optimum(
    config: AppConfig,
    sessions: Sequence[CarSession],
    house: Sequence[tuple[float, float, float]],
    pv_a: Sequence[float],
    volts: Sequence[tuple[float, float, float]],
    period_s: float,
    seconds: int,
    objective: str,
) -> LpResult:
    """Best energy to the cars (`objective="energy"`, kWh) or PV self-consumption ("pv", share)."""
    site = config.site
    periods = len(house)
    lengths = [min(period_s, seconds - k * period_s) for k in range(periods)]
    b = _Builder()
    pv_cost = objective == "pv"
    # per period: list of (col, phases) for node/capacity rows; solar terms separately
    by_period: list[list[tuple[int, tuple[int, ...], str]]] = [[] for _ in range(periods)]
    solar_terms: list[list[tuple[int, float]]] = [[] for _ in range(periods)]
    energy_cols: dict[str, list[tuple[int, float]]] = {}
    chargers = {c.id: c for c in config.chargers}
    for s in sessions:
        cfg = chargers[s.charger]
        mode = cfg.mode or site.mode
        if mode == "off" or s.need_kwh <= 0:
            continue
        modes = _modes(config, s.charger, s.phases)
        cap = min(cfg.max_current, s.max_current)
        taper = s.target_soc > TAPER_START_SOC
        k0 = max(0, int(s.at_s // period_s))
        k1 = min(periods, math.ceil(s.unplug_s / period_s))
        need: list[tuple[int, float]] = []
        prev_y: int | None = None
        prev_e: list[tuple[int, float]] = []
        for k in range(k0, k1):
            lo = k * period_s
            hi = lo + lengths[k]
            avail = max(0.0, min(hi, s.unplug_s) - max(lo, s.at_s)) / lengths[k]
            if avail <= 0:
                continue
            cols: list[int] = []
            this_e: list[tuple[int, float]] = []
            for ph in modes:
                ekw = sum(volts[k][p] for p in ph) * lengths[k] / 3.6e6
                col = b.var(cap * avail, 0.0 if pv_cost else -ekw)
                cols.append(col)
                this_e.append((col, ekw))
                need.append((col, ekw))
                by_period[k].append((col, ph, cfg.circuit or ""))
                if mode == "solar":
                    solar_terms[k].append((col, float(len(ph))))
            if len(cols) > 1:
                b.le([(c, 1.0) for c in cols], cap * avail)
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
                prev_y = y
            prev_e = this_e
        if need:
            b.le(need, s.need_kwh)
            energy_cols.setdefault(s.charger, []).extend(need)
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
    x, status, wall = b.solve()
    rows = len(b.ub_b) + len(b.eq_b)
    if x is None:
        return LpResult(math.nan, {}, status, wall, b.n, rows)
    per = {cid: float(sum(x[c] * e for c, e in cols)) for cid, cols in energy_cols.items()}
    if pv_cost:
        pv_kwh = sum(3 * pv_a[k] * NOMINAL_V * lengths[k] / 3.6e6 for k in range(periods))
        exported = float(sum(x[c] for c in export_cols))
        value = math.nan if pv_kwh <= 1e-9 else 1.0 - exported / pv_kwh
        return LpResult(value, per, status, wall, b.n, rows)
    return LpResult(sum(per.values()), per, status, wall, b.n, rows)
