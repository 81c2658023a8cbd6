"""`compute(snapshot, now)`: the one place that decides every charger's current."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache

from evpilot.core import sources as src_
from evpilot.core.charger import ChargerConfig, Phases
from evpilot.core.fill import FillCache, Problem, fill
from evpilot.core.site import (
    GRID_RELAY_W,
    NOMINAL_VOLTAGE,
    Allocation,
    BalancerState,
    ChargerAllocation,
    ChargerInput,
    ChargerMemo,
    CircuitConfig,
    DrawFloor,
    SiteConfig,
    Snapshot,
)
from evpilot.core.sources import Source
from evpilot.core.units import PhaseMap

SOLAR_MODES = ("solar", "min+solar")
_EPS = 1e-6
# A mains reading above this multiple of the fuse means something is badly wrong: stop all
# (once a second reading confirms it).
TRIP_FACTOR = 2.0
# Readings beyond these are not currents a meter on this site can see: refused as broken.
ABSURD_A = 1000.0
ABSURD_FACTOR = 3.0
_NEW_MEMO = ChargerMemo()
# Sources by module-level name: a module attribute lookup per use is measurable at 1,000 chargers.
_S_BATTERY = src_.BATTERY
_S_CAPACITY = src_.CAPACITY
_S_EV = src_.EV
_S_FALLBACK = src_.FALLBACK
_S_GRID_RELAY = src_.GRID_RELAY
_S_IDLE = src_.IDLE
_S_IMPORT = src_.IMPORT
_S_MAINS = src_.MAINS
_S_MIN = src_.MIN
_S_NONE = src_.NONE
_S_OFF = src_.OFF
_S_PHASE_SWITCH = src_.PHASE_SWITCH
_S_RAMP = src_.RAMP
_S_SHORTAGE = src_.SHORTAGE
_S_SITE = src_.SITE
_S_SOLAR = src_.SOLAR
_S_STALE_CHARGER = src_.STALE_CHARGER
_S_TRIP = src_.TRIP
# Each field's slot setter, in field order: a changed memo is filled slot by slot (what the frozen
# dataclass's __init__ does through object.__setattr__, at about half the cost).
_MEMO_SLOTS = tuple(getattr(ChargerMemo, f.name).__set__ for f in fields(ChargerMemo))
_new_object = object.__new__


def _memo(*values: object) -> ChargerMemo:
    """A `ChargerMemo` from all its field values, positional in field order."""
    memo: ChargerMemo = _new_object(ChargerMemo)
    for put, value in zip(_MEMO_SLOTS, values, strict=True):
        put(memo, value)
    return memo


# Exactly equivalent shortcuts (idle site); tests switch them off to compare with the full path.
FAST_PATHS = True
_ORDER0 = (0, 1, 2)
# A charger drawing more than its new setpoint by over this has not followed it yet (not meter noise).
FOLLOW_TOL_A = 0.05


@dataclass(frozen=True, slots=True)
class _ConfigInfo:
    """What `compute` derives from a charger's static config, kept while the config object lives."""

    config: ChargerConfig
    pm: PhaseMap
    order: tuple[int, int, int]
    wired: int
    identity: bool
    top: float
    used1: tuple[int, ...]
    used3: tuple[int, ...]


_INFO: dict[str, _ConfigInfo] = {}
# Per site object and charger count: the configs of the last tick and their derived data.
_LAYOUTS: dict[tuple[int, int], tuple[SiteConfig, _Layout]] = {}
_UNPLUGGED: tuple[float | None, bool, int | None, int] = (None, False, None, 0)
_UNSEEN = _UNPLUGGED
_SEEN_3P: tuple[float | None, bool, int | None, int] = (None, False, 3, 0)
# Decisions are immutable values that repeat tick after tick: shared instead of built anew.
# Keyed by the source's id, not the source (hashing it is a Python call): safe, as the stored
# allocation keeps that source alive, so no other object can take its id while the entry is there.
_ALLOCS: dict[tuple[float, int, int], ChargerAllocation] = {}
# The same, keyed by the value before rounding: a repeated decision skips the rounding.
_ALLOCS_BY_VALUE: dict[tuple[float, int, int], ChargerAllocation] = {}
# (id of a memo, new pause end) -> (that memo, the memo with only the pause end changed).
_PAUSED_MEMOS: dict[tuple[int, float], tuple[ChargerMemo, ChargerMemo]] = {}


def _info(cfg: ChargerConfig) -> _ConfigInfo:
    """The derived data of `cfg`, memoized per charger id (and object, since configs can change)."""
    info = _INFO.get(cfg.id)
    if info is None or info.config is not cfg:
        if len(_INFO) > 100_000:
            _INFO.clear()
        pm = cfg.phase_map
        info = _ConfigInfo(
            config=cfg,
            pm=pm,
            order=pm.order,
            wired=pm.wired,
            identity=pm.wired == 3 and pm.order == _ORDER0,
            top=min(ABSURD_A, ABSURD_FACTOR * cfg.max_current),
            used1=pm.used(1),
            used3=pm.used(3),
        )
        _INFO[cfg.id] = info
    return info


class _Layout:
    """Per-charger data derived from the configs alone, in charger order (kept while they stay the same).

    The object itself is the token: the same `_Layout` means the same configs as when it was built.
    """

    __slots__ = ("_by_id", "cfgs", "ids", "infos", "mins", "one_prio", "prios")

    def __init__(self, cfgs: list[ChargerConfig]):
        self.cfgs = cfgs
        self.infos = [_info(cfg) for cfg in cfgs]
        self.ids = [cfg.id for cfg in cfgs]
        self.mins = [cfg.min_current for cfg in cfgs]
        self.prios = [cfg.priority for cfg in cfgs]
        # Every charger has the same priority.
        self.one_prio = len(set(self.prios)) <= 1
        self._by_id: list[int] | None = None

    def by_id_descending(self) -> list[int]:
        """Charger indices by id, highest first."""
        if self._by_id is None:
            self._by_id = sorted(range(len(self.ids)), key=self.ids.__getitem__, reverse=True)
        return self._by_id


def _layout(site: SiteConfig, chargers: tuple[ChargerInput, ...]) -> _Layout:
    """The `_Layout` of these chargers, reused while their configs are the same as last tick."""
    cfgs = [ci.config for ci in chargers]
    key = (id(site), len(cfgs))
    kept = _LAYOUTS.get(key)
    # Lists compare by identity first: an unchanged site costs one pass of pointer checks.
    if kept is not None and kept[0] is site and kept[1].cfgs == cfgs:
        return kept[1]
    if len(_LAYOUTS) > 64:
        _LAYOUTS.clear()
    lay = _Layout(cfgs)
    _LAYOUTS[key] = (site, lay)
    return lay


@lru_cache(maxsize=64)
def circuit_paths(circuits: tuple[CircuitConfig, ...]) -> dict[str, tuple[str, ...]]:
    """For each circuit, the chain of circuit names from it up to the mains (excluded)."""
    parent = {c.name: c.parent for c in circuits}
    out: dict[str, tuple[str, ...]] = {}
    for name in parent:
        chain: list[str] = []
        node: str | None = name
        while node is not None and node not in chain:
            chain.append(node)
            node = parent.get(node)
        out[name] = tuple(chain)
    return out


@dataclass(frozen=True, slots=True)
class _SiteInfo:
    """What `compute` derives from a site's static config, kept while the config object lives."""

    site: SiteConfig
    paths: dict[str, tuple[str, ...]]
    limits: dict[str, float]


_SITES: dict[int, _SiteInfo] = {}


def _site_info(site: SiteConfig) -> _SiteInfo:
    """The derived data of `site`, memoized per object (the entry holds it, so its id is not reused)."""
    info = _SITES.get(id(site))
    if info is None or info.site is not site:
        if len(_SITES) > 64:
            _SITES.clear()
            _SHAPES.clear()
        info = _SiteInfo(site, circuit_paths(site.circuits), {c.name: c.limit for c in site.circuits})
        _SITES[id(site)] = info
    return info


def phases_of(ci: ChargerInput, phases: int) -> tuple[int, ...]:
    """Mains phase indices a charger draws on at `phases` phases."""
    return ci.config.phase_map.used(phases)


def _initial_phases(ci: ChargerInput, memo: ChargerMemo | None) -> int:
    if ci.config.phases == 1:
        return 1
    mode = ci.phase_mode
    if mode == "always_1p":
        return 1
    if mode == "always_3p" or mode == "not_present":
        return 3
    if mode == "solar_1p":
        return 1 if ci.mode == "solar" else 3
    return memo.phases if memo is not None else 3


@dataclass(frozen=True, slots=True)
class _Shape:
    """The constraint structure of a site for one set of charging chargers (cached)."""

    keys: tuple[tuple[str, int], ...]
    sources: tuple[Source, ...]
    members: list[list[tuple[int, float]]]
    uses: list[list[tuple[int, float]]]
    weights: tuple[float, ...]


@lru_cache(maxsize=32)
def _structure(
    circuits: tuple[CircuitConfig, ...],
    linked: tuple[tuple[int, str | None, tuple[int, ...]], ...],
    n: int,
    capacity: bool,
    relay: bool,
    site_limits: int,
) -> _Shape:
    """Which constraint each charger loads, and by how much; rebuilt only when that changes."""
    paths = circuit_paths(circuits)
    names = {c.name for c in circuits}
    keys: list[tuple[str, int]] = []
    sources: list[Source] = []
    index: dict[tuple[str, int], int] = {}
    uses: list[list[tuple[int, float]]] = [[] for _ in range(n)]

    def con(key: tuple[str, int], source: Source) -> int:
        c = index.get(key)
        if c is None:
            c = len(keys)
            index[key] = c
            keys.append(key)
            sources.append(source)
        return c

    for idx, circuit, used in linked:
        chain = ("", *(paths.get(circuit, ()) if circuit else ()))
        for node in chain:
            if node and node not in names:
                continue
            for p in used:
                uses[idx].append((con((node, p), src_.circuit(node) if node else _S_MAINS), 1.0))
        if capacity:
            uses[idx].append((con(("#capacity", 0), _S_CAPACITY), float(len(used))))
        if relay:
            uses[idx].append((con(("#relay", 0), _S_GRID_RELAY), float(len(used))))
        for k in range(site_limits):
            for p in used:
                uses[idx].append((con((f"#site{k}", p), _S_SITE), 1.0))
    members: list[list[tuple[int, float]]] = [[] for _ in keys]
    for idx, lst in enumerate(uses):
        for c, coef in lst:
            members[c].append((idx, coef))
    weights = tuple(sum(coef for _, coef in lst) for lst in members)
    return _Shape(tuple(keys), tuple(sources), members, uses, weights)


class _ShapeEntry:
    """A built `_Shape` with the candidates it was built for and figures derived from their configs."""

    __slots__ = (
        "_cons_index",
        "candidates",
        "configs",
        "eff",
        "fill_cache",
        "layout",
        "min_load",
        "shape",
        "whole_min",
    )

    def __init__(
        self,
        candidates: list[int],
        eff: list[int],
        configs: list[ChargerConfig],
        shape: _Shape,
        layout: _Layout,
    ):
        self.candidates = candidates
        # The `_infos` token of the configs this entry was last checked against.
        self.layout = layout
        self.eff = eff
        self.configs = configs
        self.shape = shape
        self.fill_cache = FillCache(len(shape.keys))
        self._cons_index: dict[tuple[str, int], int] | None = None
        # MIN is a whole, non-negative number of amperes for every candidate: sums of MINs are exact
        # in any order.
        self.whole_min = all(c.min_current >= 0 and float(c.min_current).is_integer() for c in configs)
        # Per constraint, what every candidate at MIN loads it with (summed in candidate order).
        self.min_load: list[float] | None = None

    def cons_index(self) -> dict[tuple[str, int], int]:
        """Constraint index by key (built once per shape)."""
        if self._cons_index is None:
            self._cons_index = {key: c for c, key in enumerate(self.shape.keys)}
        return self._cons_index

    def loads_at_min(self) -> list[float]:
        """Σ coefficient × MIN over the candidates, per constraint (computed once per shape)."""
        if self.min_load is None:
            load = [0.0] * len(self.shape.keys)
            uses = self.shape.uses
            for i, cfg in zip(self.candidates, self.configs, strict=True):
                mn = cfg.min_current
                for c, k in uses[i]:
                    load[c] += k * mn
            self.min_load = load
        return self.min_load


# Per site object and flags: the last shapes built, newest first (reused while candidates, phases and
# configs match).
# The site object is kept beside its entries: while it is alive its id() cannot name another site.
_SHAPES: dict[tuple[int, int, bool, bool, int], tuple[SiteConfig, list[_ShapeEntry]]] = {}
_SHAPES_KEPT = 3


def _shape(
    site: SiteConfig,
    chargers: tuple[ChargerInput, ...],
    candidates: list[int],
    eff_phases: list[int],
    cap_on: bool,
    relay: bool,
    site_limits: int,
    layout: _Layout,
) -> _ShapeEntry:
    """`_structure` for this tick, reused while the candidates, their phases and configs stay the same."""
    eff = eff_phases if len(candidates) == len(chargers) else [eff_phases[i] for i in candidates]
    key = (id(site), len(chargers), cap_on, relay, site_limits)
    kept = _SHAPES.get(key)
    if kept is None or kept[0] is not site:
        if len(_SHAPES) > 64:
            _SHAPES.clear()
        kept = _SHAPES[key] = (site, [])
    recent = kept[1]
    for hit in recent:
        if hit.candidates == candidates and hit.eff == eff:
            # The same `_infos` token: every config is the same as when the entry was checked.
            if hit.layout is layout:
                return hit
            # Lists compare configs by identity first, so an unchanged site costs one pass of pointer checks.
            if hit.configs == [chargers[i].config for i in candidates]:
                hit.layout = layout
                return hit
    eff = list(eff)
    cfgs = [chargers[i].config for i in candidates]
    linked = tuple(
        (idx, cfg.circuit, _info(cfg).used1 if e == 1 else _info(cfg).used3)
        for idx, cfg, e in zip(candidates, cfgs, eff, strict=True)
    )
    shape = _structure(site.circuits, linked, len(chargers), cap_on, relay, site_limits)
    entry = _ShapeEntry(list(candidates), eff, cfgs, shape, layout)
    # A few candidate sets per site: a shortage alternates between everyone (the paused ones are
    # back) and the few that fit.
    recent.insert(0, entry)
    del recent[_SHAPES_KEPT:]
    return entry


def _keep_order(
    chargers: tuple[ChargerInput, ...],
    candidates: list[int],
    memo_in: list[ChargerMemo],
    eff_phases: list[int],
    now: float,
    min_run_s: float,
    layout: _Layout,
) -> list[int]:
    """`candidates` sorted by the keep key, most kept first.

    The key is (priority, kept for `min_run_s`, −kWh per phase, id), in reverse. Sorted one part of
    the key at a time, least significant first: every sort is stable, so the order is the same as
    with the tuple, and each pass compares plain numbers instead of tuples.
    """
    n = len(chargers)
    member = bytearray(n)
    for i in candidates:
        member[i] = 1
    order = [i for i in layout.by_id_descending() if member[i]]
    kwh = [0.0] * n
    kept = [False] * n
    for i in candidates:
        ci = chargers[i]
        m = memo_in[i]
        x = -ci.session_kwh / eff_phases[i]
        if x != x:
            # NaN is not ordered: keep exactly what the tuple sort does with it.
            return sorted(
                candidates,
                key=lambda i: (
                    chargers[i].config.priority,
                    (memo_in[i].current > 0 and now - memo_in[i].running_since < min_run_s)
                    or (memo_in[i].current <= 0 and now - memo_in[i].stopped_at >= min_run_s),
                    -chargers[i].session_kwh / eff_phases[i],
                    chargers[i].config.id,
                ),
                reverse=True,
            )
        kwh[i] = x
        kept[i] = (m.current > 0 and now - m.running_since < min_run_s) or (
            m.current <= 0 and now - m.stopped_at >= min_run_s
        )
    order.sort(key=kwh.__getitem__, reverse=True)
    order.sort(key=kept.__getitem__, reverse=True)
    if not layout.one_prio:
        order.sort(key=layout.prios.__getitem__, reverse=True)
    return order


def valid_reading(currents: Phases, limit: float) -> bool:
    """A plausible reading: finite, within ±1000 A and at most 3 × the node's limit on each phase."""
    top = min(ABSURD_A, ABSURD_FACTOR * limit)
    return all(-ABSURD_A <= x <= top for x in currents)


def _node_capacity(
    key: tuple[str, int],
    snapshot: Snapshot,
    base: Phases,
    limits: dict[str, float],
    circuit_base: dict[str, Phases],
) -> float:
    """What the chargers may draw on one constraint, after the loads that are not theirs."""
    node, p = key
    site = snapshot.site
    if node == "":
        return site.mains_limit - base[p]
    if node == "#capacity":
        assert site.capacity_limit is not None
        return site.capacity_limit - (base[0] + base[1] + base[2])
    if node == "#relay":
        return GRID_RELAY_W / NOMINAL_VOLTAGE
    if node.startswith("#site"):
        return snapshot.site_limits[int(node[5:])].amps
    other = circuit_base.get(node)
    return limits[node] - (other[p] if other is not None else 0.0)


def _car_phases(
    ci: ChargerInput, m: ChargerMemo, phases: int, now: float, detect_s: float, stale: bool
) -> tuple[float | None, bool, int | None, int]:
    """What the car on a 3-phase charger draws on, updated before this tick's allocation.

    Returns (L1-only since, 1-phase car, car phase count, phase switches this session). The
    allocation of this tick is checked with the flag this returns, so it is never stale.
    """
    one_since, single_car, car_phases, switches = (
        m.one_phase_since,
        m.single_phase_car,
        m.car_phases,
        m.switches,
    )
    if not ci.plugged:
        return None, False, None, 0
    meas = ci.measured
    at_three = ci.config.phases == 3 and phases == 3 and ci.active_phases == 3
    if not (at_three and ci.charging) or stale:
        # Only a continuous L1-only draw on three closed phases counts towards detection.
        return None, single_car, car_phases, switches
    if meas[1] >= 0.5 or meas[2] >= 0.5:
        return None, False, 3 if (meas[1] > 2.0 or meas[2] > 2.0) else car_phases, switches
    if meas[0] > 2.0:
        one_since = one_since if one_since is not None else now
        if now - one_since >= detect_s:
            return one_since, True, 1, switches
        return one_since, single_car, car_phases, switches
    return None, single_car, car_phases, switches


def compute(snapshot: Snapshot, now: float) -> Allocation:
    """Decide every charger's current, phase count and binding source for this tick."""
    site = snapshot.site
    memos = snapshot.state.chargers
    chargers = snapshot.chargers
    n = len(chargers)
    timeout = site.meter_timeout_s
    sinfo = _site_info(site)
    paths = sinfo.paths
    limits = sinfo.limits
    rejected: list[str] = []

    # ---- readings, checked at the edge ----------------------------------------------------
    mains = snapshot.mains
    if mains is not None and not valid_reading(mains.currents, site.mains_limit):
        rejected.append("mains")
        mains = None
    trip_at: float | None = None
    tripped = False
    if (
        mains is not None
        and now - mains.taken_at <= timeout
        and max(mains.currents) > TRIP_FACTOR * site.mains_limit
    ):
        prev = snapshot.state.trip_at
        if prev is not None and mains.taken_at > prev:
            tripped = True
            trip_at = prev
        else:
            # One reading this far over could be a glitch: it is balanced on like any other (the
            # chargers on that phase drop at once), but only a second one stops every charger.
            trip_at = mains.taken_at if prev is None else prev
    fresh = mains is not None and now - mains.taken_at <= timeout

    stale_circuits: set[str] = set()
    circuit_readings: dict[str, Phases] = {}
    circuit_at: dict[str, float] = {}
    for circ in site.circuits:
        reading = snapshot.circuit_meters.get(circ.name)
        plausible = circ.limit if circ.fuse is None else circ.fuse
        if reading is not None and not valid_reading(reading.currents, plausible):
            rejected.append(f"circuit:{circ.name}")
            reading = None
        if reading is not None and now - reading.taken_at <= timeout:
            circuit_readings[circ.name] = reading.currents
            circuit_at[circ.name] = reading.taken_at
        elif circ.metered:
            stale_circuits.add(circ.name)

    memo_in: list[ChargerMemo] = [_NEW_MEMO] * n
    phases = [3] * n
    stale_ev = [False] * n
    car_seen: list[tuple[float | None, bool, int | None, int]] = [_UNSEEN] * n
    caps = [0.0] * n
    ev_limited = [False] * n
    cap_src: list[Source] = [_S_IDLE] * n
    eff_phases = [1] * n
    # Per charger: the fallback cap and its source when a reading it depends on is missing.
    fb_cap: dict[int, tuple[float, Source]] = {}
    candidates: list[int] = []
    # Candidates in a solar mode, and chargers in solar mode whose memo holds a solar start.
    solar_ids: list[int] = []
    solar_held: list[int] = []
    # Chargers that may switch phases automatically this tick.
    auto: set[int] = set()
    detect_s = site.phase_switch.detect_single_phase_s
    fallback_current = site.fallback_current
    increase_interval_s = site.increase_interval_s
    ev_headroom = site.ev_headroom
    follow_s = 3 * increase_interval_s
    ev_gap = ev_headroom + 1.0

    ev0 = ev1 = ev2 = 0.0
    # The chargers' own draw counts only where a meter's reading includes it.
    need_draw = site.exclude_self_current or bool(circuit_readings)
    # The chargers' draw per metered circuit with a reading (only those need it).
    circuit_ev: dict[str, list[float]] = {}
    # What chargers that do not follow their limits may draw (`ChargerInput.held`), per node ("" = mains).
    held_load: dict[str, list[float]] = {}
    # Per charger whose reading lags the mains: that reading, at most its lowest limit since.
    lowered: dict[int, Phases] = {}
    # What those readings showed beyond what was subtracted, per mains phase and per metered circuit
    # (None: no lagging reading): other load that may only be the cars' old draw.
    lag_mains: list[float] | None = None
    lag_circuits: dict[str, list[float]] = {}
    # Per charger: what its car may draw beyond its reading (per mains phase, per metered circuit).
    unseen: dict[int, tuple[list[float], dict[str, list[float]]]] = {}
    mains_at = mains.taken_at if mains is not None else None
    memos_get = memos.get
    layout = _layout(site, chargers)
    infos = layout.infos
    # One pass per charger: its reading and draw, the car's phases, then its own cap.
    for idx, ci in enumerate(chargers):
        cfg = ci.config
        memo = memos_get(cfg.id)
        m = memo if memo is not None else _NEW_MEMO
        memo_in[idx] = m
        info = infos[idx]
        ph_mode = ci.phase_mode
        if cfg.phases == 1:
            ph = 1
        elif ph_mode != "not_present":
            ph = _initial_phases(ci, memo)
        else:
            ph = 3
        phases[idx] = ph
        a0, a1, a2 = ci.measured
        top = info.top
        stale = absurd = False
        if not (-ABSURD_A <= a0 <= top and -ABSURD_A <= a1 <= top and -ABSURD_A <= a2 <= top):
            rejected.append(f"charger:{cfg.id}")
            stale = absurd = True
        elif ci.measured_at is not None and now - ci.measured_at > timeout:
            # Unknown draw: counted as 0, so the house load seen upstream includes it (conservative).
            stale = True
        elif need_draw and (a0 != 0.0 or a1 != 0.0 or a2 != 0.0):
            # On the mains phases (`PhaseMap.to_mains`); adding the zeros of the unused phases changes no sum.
            d0, d1, d2 = _to_mains(info, a0, a1, a2)
            low = ci.limit_low
            at = ci.measured_at
            lagging = (
                at is not None and (a0 > low or a1 > low or a2 > low) and (mains_at is None or at < mains_at)
            )
            if lagging:
                # A reading older than the mains reading may predate a lower limit: the car draws at
                # most that now, so no more than that is subtracted (the house never looks smaller).
                seen_low = (min(a0, low), min(a1, low), min(a2, low))
                lowered[idx] = seen_low
                l0, l1, l2 = _to_mains(info, *seen_low)
                if lag_mains is None:
                    lag_mains = [0.0, 0.0, 0.0]
                lag_mains[0] += d0 - l0
                lag_mains[1] += d1 - l1
                lag_mains[2] += d2 - l2
            else:
                l0, l1, l2 = d0, d1, d2
            ev0 += l0
            ev1 += l1
            ev2 += l2
            if circuit_readings and cfg.circuit is not None:
                for name in paths.get(cfg.circuit, ()):
                    if name not in circuit_readings:
                        continue
                    acc = circuit_ev.get(name)
                    if acc is None:
                        acc = circuit_ev[name] = [0.0, 0.0, 0.0]
                    if at is not None and (a0 > low or a1 > low or a2 > low) and at < circuit_at[name]:
                        c0, c1, c2 = _to_mains(info, min(a0, low), min(a1, low), min(a2, low))
                        lag = lag_circuits.setdefault(name, [0.0, 0.0, 0.0])
                        lag[0] += d0 - c0
                        lag[1] += d1 - c1
                        lag[2] += d2 - c2
                        if lag_mains is None:
                            lag_mains = [0.0, 0.0, 0.0]
                    else:
                        c0, c1, c2 = d0, d1, d2
                    acc[0] += c0
                    acc[1] += c1
                    acc[2] += c2
        high = ci.limit_high
        at = ci.measured_at
        if need_draw and high > 0.0 and at is not None and not absurd:
            # The car may draw up to a limit signaled since its reading (risen toward it, or still
            # drawing it through its reaction delay after a cut, while its reading already shows the
            # cut): the meters above may include that draw while it is not subtracted. Only a reason
            # for this charger to wait (below), never subtracted.
            if stale:
                r0 = r1 = r2 = high
            else:
                r0, r1, r2 = max(high - a0, 0.0), max(high - a1, 0.0), max(high - a2, 0.0)
            if r0 > 0.0 or r1 > 0.0 or r2 > 0.0:
                u0, u1, u2 = _to_mains(info, r0, r1, r2)
                own: dict[str, list[float]] = {}
                if circuit_readings and cfg.circuit is not None:
                    for name in paths.get(cfg.circuit, ()):
                        if name in circuit_readings:
                            own[name] = [u0, u1, u2]
                unseen[idx] = ([u0, u1, u2], own)
        if ci.held > 0.0:
            # Its device may draw `held` whatever it is told: on top of what is subtracted for it
            # (never more than it draws), that much counts as other load.
            h = info.pm.to_mains((ci.held, ci.held, ci.held))
            # Its own MIN does not come on top of it (the car draws one or the other): room to wait.
            own_prev = unseen.get(idx)
            um = list(h)
            if own_prev is not None:
                um = [own_prev[0][0] + h[0], own_prev[0][1] + h[1], own_prev[0][2] + h[2]]
            uc = dict(own_prev[1]) if own_prev is not None else {}
            for node in paths.get(cfg.circuit, ()) if cfg.circuit is not None else ():
                if node in circuit_readings:
                    was = uc.get(node, [0.0, 0.0, 0.0])
                    uc[node] = [was[0] + h[0], was[1] + h[1], was[2] + h[2]]
            unseen[idx] = (um, uc)
            for node in ("", *(paths.get(cfg.circuit, ()) if cfg.circuit is not None else ())):
                acc = held_load.get(node)
                if acc is None:
                    acc = held_load[node] = [0.0, 0.0, 0.0]
                acc[0] += h[0]
                acc[1] += h[1]
                acc[2] += h[2]
        stale_ev[idx] = stale
        if not ci.plugged:
            seen = _UNPLUGGED
        elif stale or not ci.charging or cfg.phases != 3 or ph != 3 or ci.active_phases != 3:
            seen = (None, m.single_phase_car, m.car_phases, m.switches)
        elif a1 >= 0.5 or a2 >= 0.5:
            # `_car_phases` for a draw on more than L1 (the usual case), without the call.
            car = 3 if (a1 > 2.0 or a2 > 2.0) else m.car_phases
            switches = m.switches
            seen = _SEEN_3P if car == 3 and switches == 0 else (None, False, car, switches)
        else:
            seen = _car_phases(ci, m, ph, now, detect_s, stale)
        car_seen[idx] = seen

        if ci.mode == "solar" and m.solar_started is not None:
            solar_held.append(idx)
        if ph_mode == "auto" and cfg.phases == 3 and ci.demand == 2:
            auto.add(idx)

        # ---- its own cap ----
        eff = 1 if seen[1] else ph
        if cfg.phases == 1:
            eff = 1
        eff_phases[idx] = eff
        if ci.mode == "off":
            cap_src[idx] = _S_OFF
            continue
        if ci.limit < cfg.min_current - _EPS:
            cap_src[idx] = ci.limit_source
            continue
        if ci.demand == 0:
            cap_src[idx] = _S_IDLE
            continue
        if m.paused_until > now:
            cap_src[idx] = _S_SHORTAGE
            continue
        cap, src = ci.limit, ci.limit_source
        if ci.demand == 1 and cfg.min_current < cap:
            cap, src = cfg.min_current, _S_EV
        elif ci.charging and m.current > 0 and not stale:
            # A car drawing clearly less than offered (after it had time to follow the last
            # raise) is capped near its draw; the cap lifts once it uses what it has.
            drawn = a0  # max(ci.measured), written out
            if a1 > drawn:
                drawn = a1
            if a2 > drawn:
                drawn = a2
            gap = m.current - drawn
            limited = gap > 1.0 if m.ev_limited else now - m.last_raise >= follow_s and gap > ev_gap
            if limited:
                need = max(cfg.min_current, drawn + ev_headroom)
                if need < cap:
                    cap, src = need, _S_EV
                    ev_limited[idx] = True
        caps[idx] = cap
        cap_src[idx] = src
        # A stale or refused reading never raises a setpoint: at most what the charger had before.
        fb: tuple[float, Source] | None = None
        if not fresh:
            fb = (min(fallback_current, m.current), _S_FALLBACK)
        elif stale_circuits and cfg.circuit is not None:
            for name in paths.get(cfg.circuit, ()):
                if name in stale_circuits:
                    fb = (min(fallback_current, m.current), src_.stale(name))
                    break
        if stale:
            value = min(cfg.safe_current, m.current)
            if fb is None or value < fb[0]:
                fb = (value, _S_STALE_CHARGER)
        if fb is not None:
            fb_cap[idx] = fb
        candidates.append(idx)
        if ci.mode in SOLAR_MODES:
            solar_ids.append(idx)
    ev_total = [ev0, ev1, ev2]

    if fresh and mains is not None:
        sub = ev_total if site.exclude_self_current else [0.0, 0.0, 0.0]
        base = (
            mains.currents[0] - sub[0],
            mains.currents[1] - sub[1],
            mains.currents[2] - sub[2],
        )
    else:
        base = (0.0, 0.0, 0.0)
    circuit_base: dict[str, Phases] = {}
    for name, cur in circuit_readings.items():
        ev = circuit_ev.get(name, (0.0, 0.0, 0.0))
        circuit_base[name] = (cur[0] - ev[0], cur[1] - ev[1], cur[2] - ev[2])
    if held_load:
        for node, hl in held_load.items():
            if node == "":
                base = (base[0] + hl[0], base[1] + hl[1], base[2] + hl[2])
            else:
                o = circuit_base.get(node, (0.0, 0.0, 0.0))
                circuit_base[node] = (o[0] + hl[0], o[1] + hl[1], o[2] + hl[2])
    floors, lag_err = _lagging_meters(snapshot, stale_ev, paths, circuit_readings, now)
    battery = 0.0
    bat = snapshot.battery_current
    if bat is not None and not -ABSURD_A <= bat <= ABSURD_A:
        rejected.append("battery")
    elif (
        bat is not None
        and snapshot.battery_at is not None
        and now - snapshot.battery_at <= site.battery_timeout_s
    ):
        battery = bat

    out: dict[str, ChargerAllocation] = {}
    new_memos: dict[str, ChargerMemo] = {}
    available = (
        site.mains_limit - base[0],
        site.mains_limit - base[1],
        site.mains_limit - base[2],
    )

    if tripped:
        for idx, ci in enumerate(chargers):
            m = memo_in[idx]
            out[ci.config.id] = ChargerAllocation(0.0, phases[idx], _S_TRIP)
            stopped_at = now if m.current > 0 else m.stopped_at
            new_memos[ci.config.id] = replace(m, current=0.0, phases=phases[idx], stopped_at=stopped_at)
        return Allocation(
            out,
            BalancerState(new_memos, None, trip_at, floors),
            fresh,
            False,
            base,
            available,
            rejected=tuple(rejected),
        )

    if not candidates and FAST_PATHS and _idle_site(chargers, memo_in):
        return _idle_allocation(
            chargers,
            memo_in,
            phases,
            cap_src,
            car_seen,
            trip_at,
            fresh,
            base,
            available,
            battery,
            rejected,
            floors,
            now,
        )

    # ---- solar budget (sum of phases) -------------------------------------------------------
    surplus: float | None = None
    solar_left = 0.0
    solar_share: dict[int, float] = {}
    if fresh:
        surplus = -(base[0] + base[1] + base[2]) + battery
    if solar_ids and surplus is not None:
        budget = surplus + site.solar.max_import
        sp = Problem()
        con = sp.add_constraint(budget, _S_SOLAR)
        for _ in solar_ids:
            sp.add_charger()
        index = {i: j for j, i in enumerate(solar_ids)}
        for i in solar_ids:
            sp.link(index[i], con, float(eff_phases[i]))
        s_alloc = [0.0] * len(solar_ids)
        s_bound = [_S_NONE] * len(solar_ids)
        s_caps = [caps[i] for i in solar_ids]
        s_src = [cap_src[i] for i in solar_ids]
        # Admission: a charger waiting to start joins only when the budget still covers MIN for
        # every charger already on surplus plus its own, and the export left reaches START;
        # then all admitted chargers share the budget equally. A start never pushes a running
        # session below MIN, and a running one never keeps the surplus from a newcomer for good.
        running: list[int] = []
        trial: list[int] = []
        for j, i in enumerate(solar_ids):
            started0 = memo_in[i].solar_started
            if chargers[i].mode == "min+solar":
                running.append(j)
            elif started0 is not None:
                m0 = memo_in[i]
                # Admitted on one phase's worth before the car's phase count was known, and it
                # turned out to draw on more: it must fit again, or the running ones would pay.
                if (
                    m0.car_phases is not None
                    and m0.solar_phases is not None
                    and min(m0.car_phases, eff_phases[i]) > m0.solar_phases
                ):
                    trial.append(j)
                else:
                    running.append(j)
        taken = sum(chargers[solar_ids[j]].config.min_current * eff_phases[solar_ids[j]] for j in running)
        dropped: set[int] = set()
        rechecked: dict[int, int] = {}
        for j in trial:
            i = solar_ids[j]
            need = chargers[i].config.min_current * eff_phases[i]
            if budget - taken >= need - _EPS:
                running.append(j)
                taken += need
                rechecked[j] = eff_phases[i]
            else:
                dropped.add(j)
        running_set = set(running)
        waiting = sorted(
            (j for j in range(len(solar_ids)) if j not in running_set and j not in dropped),
            key=lambda j: (-chargers[solar_ids[j]].config.priority, chargers[solar_ids[j]].config.id),
        )
        admitted: set[int] = set()
        admit_phases: dict[int, int] = {}
        for j in waiting:
            i = solar_ids[j]
            # The car's own phase count once known; before that one phase, so a 1-phase car on a
            # 3-phase charger is not kept waiting for three phases' worth of surplus.
            car = memo_in[i].car_phases
            need_phases = 1 if car is None else min(car, eff_phases[i])
            need = chargers[i].config.min_current * need_phases
            if chargers[i].config.min_current > s_caps[j] + _EPS:
                continue
            if budget - taken >= need - _EPS and surplus - taken >= site.solar.start_current - _EPS:
                admitted.add(j)
                admit_phases[j] = need_phases
                taken += need
        fill(sp, running + sorted(admitted), s_caps, s_src, s_alloc, s_bound)
        solar_left = sp.residual(con)
        short = site.solar.max_import > 0 and surplus < budget - solar_left
        solar_src = _S_IMPORT if short else _S_SOLAR
        if battery < 0 and solar_src is _S_SOLAR:
            solar_src = _S_BATTERY
        for pos, i in enumerate(solar_ids):
            ci = chargers[i]
            m = memo_in[i]
            share = s_alloc[pos]
            solar_share[i] = share
            mn = ci.config.min_current
            if ci.mode == "min+solar":
                if share < caps[i] - _EPS:
                    caps[i] = max(mn, share)
                    cap_src[i] = solar_src if share >= mn else _S_MIN
                continue
            started = m.solar_started
            solar_phases = m.solar_phases
            if pos in dropped:
                started, solar_phases = None, None
            elif pos in rechecked:
                solar_phases = rechecked[pos]
            if started is None and pos in admitted:
                started, solar_phases = now, admit_phases[pos]
            if started is None:
                caps[i] = 0.0
                cap_src[i] = solar_src
                continue
            in_grace = now - started < site.solar.start_grace_s
            short = share < mn - _EPS
            short_since = m.solar_short_since
            if in_grace:
                caps[i] = min(caps[i], max(mn, share))
                if share < caps[i] - _EPS:
                    cap_src[i] = solar_src
                short_since = None
            elif short:
                if short_since is None:
                    short_since = now
                if site.solar.stop_min == 0 or now - short_since < site.solar.stop_min * 60.0:
                    caps[i] = mn
                    cap_src[i] = solar_src
                else:
                    caps[i] = 0.0
                    cap_src[i] = solar_src
                    started = None
                    short_since = None
            else:
                short_since = None
                if share < caps[i] - _EPS:
                    caps[i] = share
                    cap_src[i] = solar_src
            memo_in[i] = replace(
                m, solar_started=started, solar_short_since=short_since, solar_phases=solar_phases
            )
    for idx in solar_held:
        if idx not in solar_share and memo_in[idx].solar_started is not None:
            memo_in[idx] = replace(
                memo_in[idx], solar_started=None, solar_short_since=None, solar_phases=None
            )
    fallback = bool(fb_cap)
    for idx, (value, why) in fb_cap.items():
        if value < caps[idx] - _EPS or (value <= caps[idx] + _EPS and cap_src[idx] is not _S_EV):
            caps[idx] = min(caps[idx], value)
            cap_src[idx] = why

    # Chargers that solar, a fallback or a low own cap leave below MIN get nothing, without a pause.
    # (Only solar and the fallback lower a cap after the per-charger pass, which keeps caps ≥ MIN.)
    if solar_share or fb_cap:
        candidates = [i for i in candidates if caps[i] >= chargers[i].config.min_current - _EPS]

    # ---- grid constraints -----------------------------------------------------------------
    cap_on = site.capacity_limit is not None and fresh
    entry = _shape(
        site,
        chargers,
        candidates,
        eff_phases,
        cap_on,
        snapshot.grid_relay_open,
        len(snapshot.site_limits),
        layout,
    )
    shape = entry.shape
    # `_node_capacity` of every key, with the mains and circuit cases inline.
    capacity: list[float] = []
    mains_limit = site.mains_limit
    for key in shape.keys:
        node, p = key
        if node == "":
            capacity.append(mains_limit - base[p])
        elif node[0] != "#":
            other = circuit_base.get(node)
            capacity.append(limits[node] - (other[p] if other is not None else 0.0))
        else:
            capacity.append(_node_capacity(key, snapshot, base, limits, circuit_base))
    sources = list(shape.sources)
    if snapshot.site_limits:
        for pos2, key in enumerate(shape.keys):
            if key[0].startswith("#site"):
                sources[pos2] = src_.site(snapshot.site_limits[int(key[0][5:])].source)
    prob = Problem(
        capacity=capacity,
        used=[0.0] * len(capacity),
        source=sources,
        members=shape.members,
        uses=shape.uses,
        cache=entry.fill_cache,
    )

    # ---- admission at MIN: greedy in keep order (O(n log n)) --------------------------------
    alloc = [0.0] * n
    bound = list(cap_src)
    over_since = snapshot.state.capacity_over_since
    capacity_short = False
    paused_now: set[int] = set()
    load = prob.used
    cap_list = prob.capacity
    uses = prob.uses
    active: list[int] = []
    # When MIN for every candidate fits every constraint, nobody is paused whatever the keep order:
    # skip the sort. Exact only with whole-ampere MINs, whose sums do not depend on the order.
    if entry.whole_min:
        at_min = entry.loads_at_min()
        if all(x <= cap + _EPS for x, cap in zip(at_min, cap_list, strict=True)):
            active = candidates
            load[:] = at_min
    if active is not candidates:
        # Paused first: lowest priority; among equals a charger that started within `min_run_s` goes
        # last (no swapping places every minute), then the one that charged most per phase it draws
        # on (kWh / phases: a 1-phase and a 3-phase charger compared by what they drew on a phase,
        # the amperes they compete for), then the id.
        cap_stop_s = site.cap_stop_s
        lag_room = _lag_room(shape.keys, lag_mains, lag_circuits) if lag_mains is not None else None
        keep_order = _keep_order(chargers, candidates, memo_in, eff_phases, now, site.min_run_s, layout)
        for i in keep_order:
            mn = chargers[i].config.min_current
            ui = uses[i]
            for c, k in ui:
                if load[c] + k * mn > cap_list[c] + _EPS:
                    break
            else:
                active.append(i)
                for c, k in ui:
                    load[c] += k * mn
                continue
            room = lag_room
            own_unseen = unseen.get(i)
            if own_unseen is not None:
                own_room = _lag_room(shape.keys, *own_unseen)
                room = own_room if room is None else [a + b for a, b in zip(room, own_room, strict=True)]
            # Within the car's reaction time after this engine stopped it, the meters above may still
            # show it drawing (at least MIN) while its reading already shows the stop.
            reacting = mn if now - memo_in[i].stopped_at < follow_s else 0.0
            if (room is not None or reacting) and all(
                load[c] + k * (mn - reacting) <= cap_list[c] + (room[c] if room is not None else 0.0) + _EPS
                for c, k in ui
            ):
                # MIN would fit if the lagging readings' cars still drew what they showed, or its own
                # car drew what it may beyond its reading: the room may only be unproven yet, so the
                # charger gets nothing now but is not paused.
                bound[i] = _S_SHORTAGE
                continue
            if cap_stop_s <= 0:
                # No capacity grace: whatever is violated, the charger pauses.
                paused_now.add(i)
                bound[i] = _S_SHORTAGE
                continue
            violated = [c for c, k in ui if load[c] + k * mn > cap_list[c] + _EPS]
            if site.cap_stop_s > 0 and all(prob.source[c] is _S_CAPACITY for c in violated):
                capacity_short = True
                if over_since is None:
                    over_since = now
            if (
                not capacity_short
                or now - (over_since or now) >= site.cap_stop_s
                or any(prob.source[c] is not _S_CAPACITY for c in violated)
            ):
                paused_now.add(i)
                bound[i] = _S_SHORTAGE
                continue
            active.append(i)
            for c, k in ui:
                load[c] += k * mn
    mins = layout.mins
    extra_caps = list(caps)
    for idx in active:
        extra_caps[idx] = caps[idx] - mins[idx]
    extra = [0.0] * n
    by_prio: dict[int, list[int]] = {}
    if layout.one_prio:
        if active:
            by_prio[chargers[active[0]].config.priority] = active
    else:
        for idx in active:
            by_prio.setdefault(chargers[idx].config.priority, []).append(idx)
    if active is candidates and len(by_prio) == 1:
        # Everyone in one fill: each constraint's weight is the shape's (whole coefficients, exact sums).
        fill(prob, active, extra_caps, cap_src, extra, bound, list(shape.weights))
    else:
        for prio in sorted(by_prio, reverse=True):
            fill(prob, sorted(by_prio[prio]), extra_caps, cap_src, extra, bound)
    for idx in active:
        alloc[idx] = mins[idx] + extra[idx]
    if lag_err:
        _hold_raises_for_lag(
            snapshot, active, alloc, memo_in, eff_phases, bound, paths, circuit_base, lag_err
        )
    _hold_raises_for_followers(
        snapshot, prob, shape.keys, active, alloc, memo_in, eff_phases, bound, stale_ev, lowered
    )
    if not capacity_short:
        over_since = None

    # ---- pacing, phase switching, memo --------------------------------------------------
    ps = site.phase_switch
    max_per_session = ps.max_per_session
    increase_deadband = site.increase_deadband
    deadband_hold_s = site.deadband_hold_s
    ramp_step = site.ramp_step
    allocs = _ALLOCS
    by_value = _ALLOCS_BY_VALUE
    paused_memos = _PAUSED_MEMOS
    floor = math.floor
    ids = layout.ids
    for idx in range(n):
        m = memo_in[idx]
        target = alloc[idx]
        src = bound[idx]
        value = target
        current = m.current
        last_raise = m.last_raise
        if target > current + _EPS:
            if current > 0 and target - current < increase_deadband and now - last_raise < deadband_hold_s:
                # Too small a rise to be worth a PWM change yet: avoids 0.1 A dithering. Held for good,
                # small rises left behind by falls would add up over many chargers sharing a node.
                value = current
            elif now - last_raise >= increase_interval_s:
                step = current + ramp_step
                value = min(target, max(step, mins[idx]))
                last_raise = now
            else:
                value = current
                src = _S_RAMP
        paused_until = m.paused_until
        if paused_now and idx in paused_now:
            paused_until = now + site.shortage_pause_s
        one_since, single_car, car_phases, switches = car_seen[idx]
        # automatic 1/3-phase switching
        ph = phases[idx]
        last_switch = m.last_switch
        if (
            auto
            and idx in auto
            and not single_car
            and (max_per_session <= 0 or switches < max_per_session)
            and idx not in fb_cap
        ):
            down_since, up_since = m.phase_down_since, m.phase_up_since
            ci = chargers[idx]
            mn = ci.config.min_current
            if ph == 3:
                up_since = None
                potential = target if idx not in solar_share else min(target, solar_share[idx])
                if potential < mn - _EPS:
                    down_since = down_since if down_since is not None else now
                    if now - down_since >= ps.down_hold_s and now - last_switch >= ps.min_interval_s:
                        ph, last_switch, down_since = 1, now, None
                else:
                    down_since = None
            else:
                down_since = None
                pot = _potential_3p(
                    prob, snapshot, idx, ci, alloc[idx], entry.cons_index(), base, limits, circuit_base
                )
                if idx in solar_share or ci.mode in SOLAR_MODES:
                    pot = min(pot, (alloc[idx] + solar_left) / 3.0)
                if pot >= mn + ps.margin:
                    up_since = up_since if up_since is not None else now
                    if now - up_since >= ps.up_hold_s and now - last_switch >= ps.min_interval_s:
                        ph, last_switch, up_since = 3, now, None
                else:
                    up_since = None
            if ph != phases[idx]:
                value, src = 0.0, _S_PHASE_SWITCH
                switches += 1
        else:
            down_since = up_since = None
        ph_out = ph if not single_car else 1
        rkey = (value, ph_out, id(src))
        decided = by_value.get(rkey)
        if decided is None:
            # Rounded down so a reported allocation never exceeds what the limits allow.
            shown = floor(value * 100.0 + 1e-6) / 100.0
            akey = (shown, ph_out, rkey[2])
            decided = allocs.get(akey)
            if decided is None:
                if len(allocs) > 10_000:
                    allocs.clear()
                decided = allocs[akey] = ChargerAllocation(shown, ph_out, src)
            if len(by_value) > 10_000:
                by_value.clear()
            by_value[rkey] = decided
        cid = ids[idx]
        out[cid] = decided
        running_since = m.running_since if current > 0 or value <= 0 else now
        stopped_at = now if current > 0 and value <= 0 else m.stopped_at
        if (
            value == current
            and last_raise == m.last_raise
            and ph == m.phases
            and ev_limited[idx] == m.ev_limited
            and single_car == m.single_phase_car
            and one_since == m.one_phase_since
            and down_since == m.phase_down_since
            and up_since == m.phase_up_since
            and last_switch == m.last_switch
            and running_since == m.running_since
            and stopped_at == m.stopped_at
            and car_phases == m.car_phases
            and switches == m.switches
        ):
            if paused_until == m.paused_until:
                # Unchanged: keep the old (immutable) memo instead of building an equal one.
                new_memos[cid] = m
                continue
            # Only the pause moved: chargers that shared a memo share the paused one (a queue
            # of cars waiting since the same tick is paused again every `shortage_pause_s`).
            pkey = (id(m), paused_until) if FAST_PATHS else None
            hit = paused_memos.get(pkey) if pkey is not None else None
            if hit is not None and hit[0] is m:
                new_memos[cid] = hit[1]
                continue
        else:
            pkey = None
        # Positional, in field order: current, phases, last_raise, paused_until, solar_started,
        # solar_short_since, solar_phases, phase_down_since, phase_up_since, last_switch,
        # one_phase_since, single_phase_car, ev_limited, running_since, car_phases, switches, stopped_at.
        memo = new_memos[cid] = _memo(
            value,
            ph,
            last_raise,
            paused_until,
            m.solar_started,
            m.solar_short_since,
            m.solar_phases,
            down_since,
            up_since,
            last_switch,
            one_since,
            single_car,
            ev_limited[idx],
            running_since,
            car_phases,
            switches,
            stopped_at,
        )
        if pkey is not None:
            if len(paused_memos) > 10_000:
                paused_memos.clear()
            paused_memos[pkey] = (m, memo)
    return Allocation(
        chargers=out,
        state=BalancerState(new_memos, over_since, trip_at, floors),
        mains_fresh=fresh,
        fallback=fallback,
        base_load=base,
        available=available,
        solar_surplus=surplus,
        rejected=tuple(rejected),
    )


def _potential_3p(
    prob: Problem,
    snapshot: Snapshot,
    idx: int,
    ci: ChargerInput,
    current: float,
    cons_index: dict[tuple[str, int], int],
    base: Phases,
    limits: dict[str, float],
    circuit_base: dict[str, Phases],
) -> float:
    """Per-phase current a 1-phase-running charger could get on 3 phases, under every constraint."""
    mine = dict(prob.uses[idx])
    used3 = ci.config.phase_map.used(3)
    keys: list[tuple[tuple[str, int], float]] = []
    circuit = ci.config.circuit
    paths = _site_info(snapshot.site).paths
    names = limits
    for node in ("", *(paths.get(circuit, ()) if circuit else ())):
        if node and node not in names:
            continue
        for p in used3:
            keys.append(((node, p), 1.0))
    if any(k[0] == "#capacity" for k in cons_index):
        keys.append((("#capacity", 0), 3.0))
    if snapshot.grid_relay_open:
        keys.append((("#relay", 0), 3.0))
    for s in range(len(snapshot.site_limits)):
        for p in used3:
            keys.append(((f"#site{s}", p), 1.0))
    best = math.inf
    for key, coef3 in keys:
        c = cons_index.get(key)
        if c is None:
            room = _node_capacity(key, snapshot, base, limits, circuit_base)
        else:
            room = prob.residual(c) + mine.get(c, 0.0) * current
        best = min(best, room / coef3)
    return best


def _lagging_meters(
    snapshot: Snapshot,
    stale_ev: list[bool],
    paths: dict[str, tuple[str, ...]],
    circuit_readings: dict[str, Phases],
    now: float,
) -> tuple[dict[str, DrawFloor], dict[str, list[float]]]:
    """Draw floors of the chargers below metered circuits, and per circuit how far its reading may lag.

    A circuit's other load is its reading minus what its chargers draw now. A meter that integrates or
    is polled slowly shows the chargers' draw of a few seconds ago: while they ramp up, that estimate
    is too low by the rise the reading does not show yet. Per phase, Σ (draw now − draw floor) bounds
    that error for a reading that lags by up to `meter_timeout_s` (a longer one is stale anyway).
    """
    floors: dict[str, DrawFloor] = {}
    err: dict[str, list[float]] = {}
    if not circuit_readings:
        return floors, err
    metered = {c.name for c in snapshot.site.circuits if c.metered and c.name in circuit_readings}
    if not metered:
        return floors, err
    window = snapshot.site.meter_timeout_s
    old = snapshot.state.draw_floors
    for idx, ci in enumerate(snapshot.chargers):
        cfg = ci.config
        if cfg.circuit is None or stale_ev[idx]:
            continue
        above = [name for name in paths.get(cfg.circuit, ()) if name in metered]
        if not above:
            continue
        d = _info(cfg).pm.to_mains(ci.measured)
        f = old.get(cfg.id)
        if f is None:
            f = DrawFloor(d, d, now)
        elif now - f.since >= window:
            f = DrawFloor(d, _min3(f.low, d), now)
        else:
            f = DrawFloor(_min3(f.low, d), f.low_prev, f.since)
        floors[cfg.id] = f
        low = _min3(f.low, f.low_prev)
        rise = (max(0.0, d[0] - low[0]), max(0.0, d[1] - low[1]), max(0.0, d[2] - low[2]))
        if rise[0] > 0.0 or rise[1] > 0.0 or rise[2] > 0.0:
            for name in above:
                acc = err.setdefault(name, [0.0, 0.0, 0.0])
                for p in range(3):
                    acc[p] += rise[p]
    return floors, err


def _lag_room(
    keys: tuple[tuple[str, int], ...], lag_mains: list[float], lag_circuits: dict[str, list[float]]
) -> list[float]:
    """Per constraint, the other load that may only be lagging readings' old draw (see `compute`)."""
    out: list[float] = []
    for node, p in keys:
        if node == "":
            out.append(lag_mains[p])
        elif node == "#capacity":
            out.append(lag_mains[0] + lag_mains[1] + lag_mains[2])
        elif node[0] != "#":
            lag = lag_circuits.get(node)
            out.append(lag[p] if lag is not None else 0.0)
        else:
            out.append(0.0)
    return out


def _to_mains(info: _ConfigInfo, a0: float, a1: float, a2: float) -> Phases:
    """`PhaseMap.to_mains`, with the common wirings written out (this runs for every drawing charger)."""
    if info.identity:
        return (a0, a1, a2)
    if info.wired == 1:
        first = info.order[0]
        if first == 0:
            return (a0, 0.0, 0.0)
        if first == 1:
            return (0.0, a0, 0.0)
        return (0.0, 0.0, a0)
    return info.pm.to_mains((a0, a1, a2))


def _min3(a: Phases, b: Phases) -> Phases:
    return (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]))


def _hold_raises_for_lag(
    snapshot: Snapshot,
    active: list[int],
    alloc: list[float],
    memo_in: list[ChargerMemo],
    eff_phases: list[int],
    bound: list[Source],
    paths: dict[str, tuple[str, ...]],
    circuit_base: dict[str, Phases],
    lag_err: dict[str, list[float]],
) -> None:
    """Scale down raises below a metered circuit to what it allows if its reading lags the chargers' rise.

    The allocation already fits every node as its reading is read now; this only takes back part of
    the increases (never below a charger's current setpoint), so that they also fit if the reading
    predates the chargers' recent rise (other load = reading − draw floors, see `_lagging_meters`).
    """
    chargers = snapshot.chargers
    limits = {c.name: c.limit for c in snapshot.site.circuits}
    factor: dict[int, tuple[float, Source]] = {}
    for name, err in lag_err.items():
        base = circuit_base[name]
        room = [limits[name] - base[p] - err[p] for p in range(3)]
        rises = [0.0, 0.0, 0.0]
        below: list[int] = []
        for idx in active:
            circuit = chargers[idx].config.circuit
            if circuit is None or name not in paths.get(circuit, ()):
                continue
            below.append(idx)
            info = _info(chargers[idx].config)
            held = min(alloc[idx], memo_in[idx].current)
            rise = alloc[idx] - held
            for p in info.used1 if eff_phases[idx] == 1 else info.used3:
                room[p] -= held
                rises[p] += rise
        f = 1.0
        for p in range(3):
            if rises[p] > _EPS and rises[p] > room[p] + _EPS:
                f = min(f, max(0.0, room[p]) / rises[p])
        if f < 1.0:
            for idx in below:
                if f < factor.get(idx, (1.0, _S_NONE))[0]:
                    factor[idx] = (f, src_.circuit(name))
    for idx, (f, src) in factor.items():
        held = min(alloc[idx], memo_in[idx].current)
        if alloc[idx] > held + _EPS:
            alloc[idx] = held + f * (alloc[idx] - held)
            bound[idx] = src


def _hold_raises_for_followers(
    snapshot: Snapshot,
    prob: Problem,
    keys: tuple[tuple[str, int], ...],
    active: list[int],
    alloc: list[float],
    memo_in: list[ChargerMemo],
    eff_phases: list[int],
    bound: list[Source],
    stale_ev: list[bool],
    lowered: dict[int, Phases],
) -> None:
    """Hold raises back while a charger under the same node still draws more than its new setpoint.

    A car follows a new setpoint after a delay of its own (1-5 s, some faster than others). Room that a
    lowered charger frees is given to the others only once its car draws less: otherwise a faster car
    takes it while the slower one still draws its old current, and the node is over its limit until the
    slower car follows (longer still as seen through a lagging meter). Per constraint, the setpoints plus
    what chargers draw beyond theirs must fit; raises are scaled down to make them fit (never below a
    charger's current setpoint), and a start that would get less than MIN waits.
    """
    chargers = snapshot.chargers
    rising = [i for i in active if alloc[i] > memo_in[i].current + _EPS]
    if not rising:
        return
    beyond: dict[int, float] = {}
    index: dict[tuple[str, int], int] | None = None
    paths = _site_info(snapshot.site).paths
    n_site = len(snapshot.site_limits)
    for idx, ci in enumerate(chargers):
        a = alloc[idx]
        # A draw above the lowest limit since a lagging reading is in the other load already.
        meas = lowered.get(idx, ci.measured) if lowered else ci.measured
        if (
            meas[0] <= a + FOLLOW_TOL_A and meas[1] <= a + FOLLOW_TOL_A and meas[2] <= a + FOLLOW_TOL_A
        ) or stale_ev[idx]:
            continue
        if index is None:
            index = {key: c for c, key in enumerate(keys)}
        info = _info(ci.config)
        d = info.pm.to_mains(meas)
        used = info.used1 if eff_phases[idx] == 1 else info.used3
        circuit = ci.config.circuit
        chain = ("", *(paths.get(circuit, ()) if circuit else ()))
        total = 0.0
        for p in range(3):
            e = d[p] - (a if p in used else 0.0)
            if e <= FOLLOW_TOL_A:
                continue
            total += e
            for node in chain:
                c = index.get((node, p))
                if c is not None:
                    beyond[c] = beyond.get(c, 0.0) + e
            for k in range(n_site):
                c = index.get((f"#site{k}", p))
                if c is not None:
                    beyond[c] = beyond.get(c, 0.0) + e
        for key in (("#capacity", 0), ("#relay", 0)):
            c = index.get(key)
            if c is not None and total > 0.0:
                beyond[c] = beyond.get(c, 0.0) + total
    if not beyond:
        return
    factor: dict[int, tuple[float, Source]] = {}
    for c, extra in beyond.items():
        load = 0.0
        rises = 0.0
        for i, coef in prob.members[c]:
            load += coef * alloc[i]
            rise = alloc[i] - memo_in[i].current
            if rise > _EPS:
                rises += coef * rise
        deficit = load + extra - prob.capacity[c]
        if deficit <= _EPS or rises <= _EPS:
            continue
        f = max(0.0, (rises - deficit) / rises)
        for i, _k in prob.members[c]:
            if alloc[i] > memo_in[i].current + _EPS and f < factor.get(i, (1.0, _S_NONE))[0]:
                factor[i] = (f, prob.source[c])
    for i, (f, src) in factor.items():
        held = memo_in[i].current
        value = held + f * (alloc[i] - held)
        if value < chargers[i].config.min_current - _EPS and held < chargers[i].config.min_current - _EPS:
            # A start waits (admitted, not paused): reported like an increase held by pacing.
            value, src = 0.0, _S_RAMP
        alloc[i] = max(value, held)
        bound[i] = src


def _idle_site(chargers: tuple[ChargerInput, ...], memo_in: list[ChargerMemo]) -> bool:
    """No charger is a candidate and none needs the rest of `compute`: no solar timer to clear, no
    automatic phase switch to consider."""
    for idx, ci in enumerate(chargers):
        if ci.mode == "solar" and memo_in[idx].solar_started is not None:
            return False
        if ci.phase_mode == "auto" and ci.demand == 2 and ci.config.phases == 3:
            return False
    return True


def _idle_allocation(
    chargers: tuple[ChargerInput, ...],
    memo_in: list[ChargerMemo],
    phases: list[int],
    cap_src: list[Source],
    car_seen: list[tuple[float | None, bool, int | None, int]],
    trip_at: float | None,
    fresh: bool,
    base: Phases,
    available: Phases,
    battery: float,
    rejected: list[str],
    floors: dict[str, DrawFloor],
    now: float,
) -> Allocation:
    """What `compute` decides when no charger is a candidate (`_idle_site`), without its grid pass.

    Every charger gets 0 A (a fall needs no ramp, nothing is admitted, so nothing pauses), its
    phase-switch timers are cleared, and with no candidate no capacity overrun is pending.
    """
    out: dict[str, ChargerAllocation] = {}
    new_memos: dict[str, ChargerMemo] = {}
    for idx, ci in enumerate(chargers):
        m = memo_in[idx]
        src = cap_src[idx]
        one_since, single_car, car_phases, switches = car_seen[idx]
        ph = phases[idx]
        ph_out = ph if not single_car else 1
        akey = (0.0, ph_out, id(src))
        decided = _ALLOCS.get(akey)
        if decided is None:
            if len(_ALLOCS) > 10_000:
                _ALLOCS.clear()
            decided = _ALLOCS[akey] = ChargerAllocation(0.0, ph_out, src)
        cid = ci.config.id
        out[cid] = decided
        if (
            m.current == 0.0
            and ph == m.phases
            and not m.ev_limited
            and single_car == m.single_phase_car
            and one_since == m.one_phase_since
            and m.phase_down_since is None
            and m.phase_up_since is None
            and car_phases == m.car_phases
            and switches == m.switches
        ):
            new_memos[cid] = m
            continue
        new_memos[cid] = _memo(
            0.0,
            ph,
            m.last_raise,
            m.paused_until,
            m.solar_started,
            m.solar_short_since,
            m.solar_phases,
            None,
            None,
            m.last_switch,
            one_since,
            single_car,
            False,
            m.running_since,
            car_phases,
            switches,
            now if m.current > 0 else m.stopped_at,
        )
    return Allocation(
        chargers=out,
        state=BalancerState(new_memos, None, trip_at, floors),
        mains_fresh=fresh,
        fallback=False,
        base_load=base,
        available=available,
        solar_surplus=-(base[0] + base[1] + base[2]) + battery if fresh else None,
        rejected=tuple(rejected),
    )


def default_state() -> BalancerState:
    """The state before the first tick."""
    return BalancerState()


def site_config_with(site: SiteConfig, **changes: object) -> SiteConfig:
    """A copy of `site` with some fields changed."""
    return replace(site, **changes)  # type: ignore[arg-type]
