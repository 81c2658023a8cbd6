"""Which chargers `compute` need not see again: settled ones keep their decision and memo.

A charger `compute` leaves out for a reason that does not lapse with time (off, its own limit below
MIN, no demand) and that draws nothing gets 0 A; once `compute` has left its memo as it found it
(a fixed point), its decision and memo depend only on its own input, whatever the other chargers,
the readings and the time do. So while that input stays the same, the caller may leave it out of
the snapshot and put its decision and memo back afterwards (`merge`), or, when every charger is
left out, only recompute the figures taken from the readings (`idle_allocation`). Two things see
every charger: a trip (pending, or a reading at trip level: everyone stops) and a circuit meter's
reading (draw floors are kept per charger), so `may_leave_out` is False then.

`reuse` covers the chargers that do draw: when the last `compute` left every memo as it found it,
and the new readings leave every charger where it is (held at its own cap with room left on every
node above it, or held by the increase deadband or interval below a node, until the deadband's hold
or the interval ends), the next `compute` would
return the same decisions and memos; only the figures of the readings are new.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from evpilot.core import sources as src_
from evpilot.core.balancer import (
    ABSURD_A,
    ABSURD_FACTOR,
    FOLLOW_TOL_A,
    SOLAR_MODES,
    TRIP_FACTOR,
    _car_phases,
    _initial_phases,
    _layout,
    _node_capacity,
    _shape,
    _site_info,
    compute,
)
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerAllocation,
    ChargerInput,
    ChargerMemo,
    Reading,
    SiteConfig,
    Snapshot,
)
from evpilot.core.sources import Source, SourceKind
from evpilot.core.units import PhaseMap
from evpilot.core.values import positional

_EPS = 1e-6
# How far from a threshold of `compute` a value found here must be for `reuse` to trust its side:
# far above the rounding of the few float operations that may differ from `compute`'s.
_MARGIN = 1e-7
# Built on every steady tick: filled slot by slot (`core.values.positional`).
_allocation = positional(Allocation)


def idle_input(ci: ChargerInput) -> bool:
    """A charger `compute` leaves out whatever the time and the readings: it wants nothing that can come
    back by itself (off, its own limit below MIN, or no demand) and draws nothing."""
    m = ci.measured
    if ci.charging or m[0] != 0.0 or m[1] != 0.0 or m[2] != 0.0:
        return False
    if ci.phase_mode == "auto" and ci.demand == 2 and ci.config.phases == 3:
        return False
    return ci.mode == "off" or ci.limit < ci.config.min_current - _EPS or ci.demand == 0


def settled(
    ci: ChargerInput, before: ChargerMemo | None, after: ChargerMemo | None, decision: ChargerAllocation
) -> bool:
    """After `compute` saw `ci` with memo `before` and returned `after` and `decision`: both hold for as
    long as the input stays the same (its `measured_at` aside, which cannot matter at 0 A)."""
    return (
        before is not None
        and after is before
        and decision.current == 0.0
        and decision.source.kind is not SourceKind.TRIP
        and idle_input(ci)
        and not (ci.mode in SOLAR_MODES and before.solar_started is not None)
    )


def may_leave_out(
    site: SiteConfig, mains: Reading | None, circuits: Mapping[str, Reading], state: BalancerState
) -> bool:
    """Settled chargers may be left out of this tick's `compute`: no trip pending or possible, and no
    circuit meter reading."""
    if circuits or state.trip_at is not None:
        return False
    return mains is None or not max(mains.currents) > TRIP_FACTOR * site.mains_limit


def merge(
    alloc: Allocation, order: Iterable[str], left_out: Mapping[str, tuple[ChargerAllocation, ChargerMemo]]
) -> Allocation:
    """`alloc` (computed without the `left_out` chargers) with their decisions and memos, in `order`."""
    out = alloc.chargers
    memos = alloc.state.chargers
    decisions: dict[str, ChargerAllocation] = {}
    new: dict[str, ChargerMemo] = {}
    for cid in order:
        kept = left_out.get(cid)
        if kept is None:
            decisions[cid] = out[cid]
            new[cid] = memos[cid]
        else:
            decisions[cid], new[cid] = kept
    st = alloc.state
    return Allocation(
        decisions,
        BalancerState(new, st.capacity_over_since, st.trip_at, st.draw_floors),
        alloc.mains_fresh,
        alloc.fallback,
        alloc.base_load,
        alloc.available,
        alloc.solar_surplus,
        alloc.rejected,
    )


def idle_allocation(
    site: SiteConfig,
    mains: Reading | None,
    battery_current: float | None,
    battery_at: float | None,
    now: float,
    decisions: Mapping[str, ChargerAllocation],
    state: BalancerState,
) -> Allocation:
    """What `compute` returns when every charger is left out (`may_leave_out` holds): their
    `decisions`, `state` (their memos; no trip, capacity timer or draw floor) and the figures of the
    readings (the chargers draw nothing)."""
    rejected: list[str] = []
    if mains is not None:
        a, b, c = mains.currents
        top = min(ABSURD_A, ABSURD_FACTOR * site.mains_limit)
        if not (-ABSURD_A <= a <= top and -ABSURD_A <= b <= top and -ABSURD_A <= c <= top):
            rejected.append("mains")
            mains = None
    fresh = mains is not None and now - mains.taken_at <= site.meter_timeout_s
    if mains is not None and fresh:
        cur = mains.currents
        # The chargers' own current subtracted from the reading is exactly 0.
        base = (cur[0] - 0.0, cur[1] - 0.0, cur[2] - 0.0)
    else:
        base = (0.0, 0.0, 0.0)
    battery = 0.0
    bat = battery_current
    if bat is not None and not -ABSURD_A <= bat <= ABSURD_A:
        rejected.append("battery")
    elif bat is not None and battery_at is not None and now - battery_at <= site.battery_timeout_s:
        battery = bat
    limit = site.mains_limit
    return Allocation(
        decisions,
        state,
        fresh,
        False,
        base,
        (limit - base[0], limit - base[1], limit - base[2]),
        -(base[0] + base[1] + base[2]) + battery if fresh else None,
        tuple(rejected),
    )


def reuse(snapshot: Snapshot, now: float, last: Allocation) -> Allocation | None:
    """`compute(snapshot, now)` when it is certain to decide exactly as `last` did, else None."""
    got = analyse(snapshot, now, last)
    return None if got is None else got[0]


def analyse(snapshot: Snapshot, now: float, last: Allocation) -> tuple[Allocation, Steady | None] | None:
    """`reuse`, and the `Steady` that checks the next ticks for the same outcome cheaply.

    `last` is what `compute` (or `reuse`) returned for the same chargers on an earlier tick, and
    `snapshot.state` holds its memos. Each step of `compute` is followed on the new inputs for the
    cases it can be followed cheaply (no trip, every reading fresh and valid, no circuit meter, no
    solar mode, no shortage): each charger's own cap and car phases come out as before; either every
    charger that wants current fits at its own cap with room left on every node (then the fill gives
    each exactly its cap), or there is a single one, and its level below the tightest node is known
    to within `_MARGIN`; and the pacing then holds every setpoint where the memo has it (at its
    target, or within the increase deadband, or waiting for the increase interval), so every memo
    stays as it is and every decision's source is the one `last` reported. Any doubt (a value
    within `_MARGIN` of a threshold, a case not followed) returns None.
    """
    site = snapshot.site
    lst = last.state
    if (
        not last.mains_fresh
        or last.fallback
        or last.rejected
        or lst.trip_at is not None
        or lst.capacity_over_since is not None
        or lst.draw_floors
        or snapshot.circuit_meters
    ):
        return None
    for circ in site.circuits:
        if circ.metered:
            return None
    mains = snapshot.mains
    if mains is None or not _mains_ok(site, mains, now):
        return None
    battery = _battery(snapshot, now)
    if battery is None:
        return None
    chargers = snapshot.chargers
    decided = last.chargers
    memos = snapshot.state.chargers
    last_memos = lst.chargers
    n = len(chargers)
    if n != len(decided) or n != len(last_memos):
        return None
    timeout = site.meter_timeout_s
    exclude = site.exclude_self_current
    detect_s = site.phase_switch.detect_single_phase_s
    max_switches = site.phase_switch.max_per_session
    follow_s = 3 * site.increase_interval_s
    ev_gap = site.ev_headroom + 1.0
    ev0 = ev1 = ev2 = 0.0
    # Per charger that wants current (a candidate): its index, cap, cap's source and memo.
    cands: list[tuple[int, float, Source, ChargerMemo]] = []
    eff_phases = [1] * n
    # Per charger: what the fill gives it (0 unless a candidate) and the source reported with it.
    outs: list[tuple[float, Source, ChargerMemo]] = []
    per: list[_Per] = []
    # Whether every charger drawing on three phases is known to have a 3-phase car (`Steady`).
    steady_ok = True
    until = math.inf
    for idx, ci in enumerate(chargers):
        cfg = ci.config
        cid = cfg.id
        m = memos.get(cid)
        if m is None or m is not last_memos.get(cid) or ci.mode in SOLAR_MODES:
            return None
        if m.phase_down_since is not None or m.phase_up_since is not None:
            return None
        a0, a1, a2 = ci.measured
        top = min(ABSURD_A, ABSURD_FACTOR * cfg.max_current)
        if not (-ABSURD_A <= a0 <= top and -ABSURD_A <= a1 <= top and -ABSURD_A <= a2 <= top):
            return None
        at = ci.measured_at
        if at is not None and (
            now - at > timeout or (at < mains.taken_at and max(a0, a1, a2) > ci.limit_low)
        ):
            # Stale, or older than the mains reading and above a limit signaled since: `compute`
            # subtracts less than it shows.
            return None
        if ci.held != 0.0:
            # Counted as other load above its draw.
            return None
        pm = cfg.phase_map
        if exclude and (a0 != 0.0 or a1 != 0.0 or a2 != 0.0):
            d = pm.to_mains(ci.measured)
            ev0 += d[0]
            ev1 += d[1]
            ev2 += d[2]
        ph = _initial_phases(ci, m)
        if ph != m.phases:
            return None
        seen = _car_phases(ci, m, ph, now, detect_s, False)
        if (
            seen[0] != m.one_phase_since
            or seen[1] != m.single_phase_car
            or seen[2] != m.car_phases
            or seen[3] != m.switches
        ):
            return None
        single = m.single_phase_car
        # Charging on three phases: what `_car_phases` sees depends on the draw on L2 and L3.
        three = ci.plugged and ci.charging and cfg.phases == 3 and ph == 3 and ci.active_phases == 3
        if three and (m.car_phases != 3 or m.one_phase_since is not None or single):
            steady_ok = False
        eff_phases[idx] = 1 if single or cfg.phases == 1 else ph
        d_last = decided.get(cid)
        if d_last is None or d_last.phases != (1 if single else ph):
            return None
        auto = (
            ci.phase_mode == "auto"
            and cfg.phases == 3
            and ci.demand == 2
            and not single
            and (max_switches <= 0 or m.switches < max_switches)
        )
        mn = cfg.min_current
        ev: tuple[float, bool, float, float, float, float] | None = None
        src: Source
        if ci.mode == "off":
            src = src_.OFF
        elif ci.limit < mn - _EPS:
            src = ci.limit_source
        elif ci.demand == 0:
            src = src_.IDLE
        elif m.paused_until > now:
            src = src_.SHORTAGE
            until = min(until, m.paused_until)
        else:
            # A candidate: its own cap, as `compute` finds it.
            cap, src = ci.limit, ci.limit_source
            limited = False
            if ci.demand == 1 and mn < cap:
                cap, src = mn, src_.EV
            elif ci.charging and m.current > 0:
                drawn = max(a0, a1, a2)
                gap = m.current - drawn
                if gap > 1.0 if m.ev_limited else now - m.last_raise >= follow_s and gap > ev_gap:
                    need = max(mn, drawn + site.ev_headroom)
                    if need < cap:
                        cap, src = need, src_.EV
                        limited = True
                ev = (m.current, m.ev_limited, m.last_raise, mn, ci.limit, cap)
            if limited != m.ev_limited or (auto and ph != 3):
                return None
            cands.append((idx, cap, src, m))
            outs.append((0.0, src, m))
            per.append(_Per(ci, top, pm, three, ev))
            continue
        # Not a candidate: 0 A from its own cap's source, which must be what it had.
        if auto or m.ev_limited or m.current != 0.0 or d_last.source != src:
            return None
        outs.append((0.0, src, m))
        per.append(_Per(ci, top, pm, three, None))
    c0, c1, c2 = mains.currents
    base = (c0 - ev0, c1 - ev1, c2 - ev2) if exclude else (c0 - 0.0, c1 - 0.0, c2 - 0.0)
    steady = Steady(snapshot, now, last, per) if steady_ok else None
    if cands and not _held(snapshot, now, base, cands, eff_phases, outs, decided, steady):
        return None
    if steady is not None:
        steady.until = min(steady.until, until)
        if not cands:
            steady.usable = True
    alloc = Allocation(
        decided,
        lst,
        True,
        False,
        base,
        (site.mains_limit - base[0], site.mains_limit - base[1], site.mains_limit - base[2]),
        -(base[0] + base[1] + base[2]) + battery,
        (),
    )
    return alloc, (steady if steady is not None and steady.usable else None)


def _mains_ok(site: SiteConfig, mains: Reading, now: float) -> bool:
    """The mains reading is fresh, valid and below the trip level."""
    if now - mains.taken_at > site.meter_timeout_s:
        return False
    limit = site.mains_limit
    c0, c1, c2 = mains.currents
    top = min(ABSURD_A, ABSURD_FACTOR * limit)
    if not (-ABSURD_A <= c0 <= top and -ABSURD_A <= c1 <= top and -ABSURD_A <= c2 <= top):
        return False
    return not max(c0, c1, c2) > TRIP_FACTOR * limit


def _battery(snapshot: Snapshot, now: float) -> float | None:
    """The battery current `compute` counts (0 when stale or missing); None when it would refuse it."""
    bat = snapshot.battery_current
    if bat is None:
        return 0.0
    if not -ABSURD_A <= bat <= ABSURD_A:
        return None
    at = snapshot.battery_at
    return bat if at is not None and now - at <= snapshot.site.battery_timeout_s else 0.0


class _Per:
    """What `Steady.check` needs of one charger: its input, plausible top, phase map, whether its car's
    phases depend on the draw, and for a charger capped near its car's draw, how that cap was found."""

    __slots__ = ("ev", "follow", "input", "pm", "three", "top")

    def __init__(
        self,
        ci: ChargerInput,
        top: float,
        pm: PhaseMap,
        three: bool,
        ev: tuple[float, bool, float, float, float, float] | None,
    ) -> None:
        self.input = ci
        self.top = top
        # None: the charger's L1..L3 are the mains L1..L3.
        self.pm: PhaseMap | None = None if pm.wired == 3 and pm.order == (0, 1, 2) else pm
        self.three = three
        # (memo current, memo ev_limited, memo last raise, MIN, own limit, the cap found).
        self.ev = ev
        # The most it may draw on a conductor while others are raised (target + tolerance).
        self.follow = math.inf


class Steady:
    """A cheap check that the next ticks decide as the analysed one did (`analyse`).

    It holds the analysed snapshot's inputs and the figures that decided it; a new snapshot with the
    same site, memos and charger inputs but for their readings (and their time) gets the same
    decisions while every reading stays fresh and valid, the time stays before the first timer that
    could fire (a raise, a pause's end), each car's cap near its draw comes out the same, and the
    new base load leaves the same room: every node above the chargers at their caps, or for a single
    charger held below the mains, a level in the same band of the deadband.
    """

    def __init__(self, snapshot: Snapshot, now: float, last: Allocation, per: list[_Per]) -> None:
        site = snapshot.site
        self.site = site
        self.site_limits = snapshot.site_limits
        self.relay = snapshot.grid_relay_open
        self.memos = snapshot.state.chargers
        self.decided = last.chargers
        self.state = last.state
        self.now = now
        # A mains reading above this is refused or at trip level (`_mains_ok`).
        self.mains_top = min(ABSURD_A, ABSURD_FACTOR * site.mains_limit, TRIP_FACTOR * site.mains_limit)
        self.until = math.inf
        self.per = per
        self.usable = False
        # Followers are checked only while some target is above its setpoint.
        self.rising = False
        # Nodes whose room depends on the readings: (0 = mains phase p, 1 = capacity sum, p, load,
        # margin) while every candidate is at its cap.
        self.nodes: list[tuple[int, int, float, float]] = []
        # For a single candidate held below the mains: its index, MIN, cap above MIN, memo current,
        # whether the deadband holds it (else the increase interval), the mains phases and weights.
        self.bound: tuple[int, float, float, float, bool, list[tuple[int, float]]] | None = None

    def check(self, snapshot: Snapshot, now: float) -> Allocation | None:
        """What `compute(snapshot, now)` returns, when this snapshot is certain to decide the same."""
        site = self.site
        if (
            snapshot.site is not site
            or snapshot.circuit_meters
            or not self.now <= now < self.until
            or snapshot.site_limits != self.site_limits
            or snapshot.grid_relay_open != self.relay
        ):
            return None
        mains = snapshot.mains
        if mains is None or now - mains.taken_at > site.meter_timeout_s:
            return None
        c0, c1, c2 = mains.currents
        top = self.mains_top
        if not (-ABSURD_A <= c0 <= top and -ABSURD_A <= c1 <= top and -ABSURD_A <= c2 <= top):
            return None
        battery = 0.0
        bat = snapshot.battery_current
        if bat is not None:
            if not -ABSURD_A <= bat <= ABSURD_A:
                return None
            at = snapshot.battery_at
            if at is not None and now - at <= site.battery_timeout_s:
                battery = bat
        mains_at = mains.taken_at
        chargers = snapshot.chargers
        per = self.per
        if len(chargers) != len(per):
            return None
        state = snapshot.state
        if state is not self.state and state.chargers is not self.memos:
            old = self.memos
            memos = state.chargers
            for ci in chargers:
                cid = ci.config.id
                if memos.get(cid) is not old.get(cid):
                    return None
        timeout = site.meter_timeout_s
        exclude = site.exclude_self_current
        follow_s = 3 * site.increase_interval_s
        ev_gap = site.ev_headroom + 1.0
        rising = self.rising
        ev0 = ev1 = ev2 = 0.0
        for ci, q in zip(chargers, per, strict=True):
            p = q.input
            if (
                ci.config is not p.config
                or ci.mode != p.mode
                or ci.demand != p.demand
                or ci.limit != p.limit
                or (ci.limit_source is not p.limit_source and ci.limit_source != p.limit_source)
                or ci.phase_mode != p.phase_mode
                or ci.active_phases != p.active_phases
                or ci.charging != p.charging
                or ci.plugged != p.plugged
                or ci.held != p.held
            ):
                return None
            a0, a1, a2 = ci.measured
            top = q.top
            if not (-ABSURD_A <= a0 <= top and -ABSURD_A <= a1 <= top and -ABSURD_A <= a2 <= top):
                return None
            at = ci.measured_at
            if at is not None and (now - at > timeout or (at < mains_at and max(a0, a1, a2) > ci.limit_low)):
                return None
            if exclude and (a0 != 0.0 or a1 != 0.0 or a2 != 0.0):
                pm = q.pm
                if pm is None:
                    ev0 += a0
                    ev1 += a1
                    ev2 += a2
                else:
                    d = pm.to_mains(ci.measured)
                    ev0 += d[0]
                    ev1 += d[1]
                    ev2 += d[2]
            if q.three and not (a1 >= 0.5 or a2 >= 0.5):
                return None
            ev = q.ev
            if ev is not None:
                current, was, last_raise, mn, lim, cap0 = ev
                drawn = max(a0, a1, a2)
                gap = current - drawn
                cap = lim
                limited = False
                if gap > 1.0 if was else now - last_raise >= follow_s and gap > ev_gap:
                    need = max(mn, drawn + site.ev_headroom)
                    if need < cap:
                        cap = need
                        limited = True
                if limited != was or cap != cap0:
                    return None
            if rising:
                f = q.follow
                if a0 > f or a1 > f or a2 > f:
                    return None
        base = (c0 - ev0, c1 - ev1, c2 - ev2) if exclude else (c0 - 0.0, c1 - 0.0, c2 - 0.0)
        limit = site.mains_limit
        for kind, ph, load, marg in self.nodes:
            cap_c = limit - base[ph] if kind == 0 else site.capacity_limit - (base[0] + base[1] + base[2])  # type: ignore[operator]
            if load > cap_c - marg - 1e-12 * abs(cap_c):
                return None
        bound = self.bound
        if bound is not None:
            idx, mn, extra, current, deadband_held, weights = bound
            best = math.inf
            for ph, w in weights:
                cap_c = limit - base[ph]
                if w * mn > cap_c + _EPS - _MARGIN:
                    return None
                ratio = (cap_c - w * mn) / w
                if ratio < best:
                    best = ratio
            if not best <= extra - _MARGIN:
                return None
            t = mn + max(0.0, best)
            rise = t - current
            if not rise > _EPS + _MARGIN:
                return None
            held = current > 0 and rise < site.increase_deadband - _MARGIN
            if deadband_held != held or (
                not held and current > 0 and rise < site.increase_deadband + _MARGIN
            ):
                return None
            f = t + FOLLOW_TOL_A - _MARGIN
            a0, a1, a2 = chargers[idx].measured
            if a0 > f or a1 > f or a2 > f:
                return None
        # Positional, in field order: chargers, state, mains_fresh, fallback, base_load, available,
        # solar_surplus, rejected.
        return _allocation(
            self.decided,
            self.state,
            True,
            False,
            base,
            (limit - base[0], limit - base[1], limit - base[2]),
            -(base[0] + base[1] + base[2]) + battery,
            (),
        )


def _held(
    snapshot: Snapshot,
    now: float,
    base: tuple[float, float, float],
    cands: list[tuple[int, float, Source, ChargerMemo]],
    eff_phases: list[int],
    outs: list[tuple[float, Source, ChargerMemo]],
    decided: Mapping[str, ChargerAllocation],
    steady: Steady | None,
) -> bool:
    """`analyse` for the chargers that want current: the fill and the pacing leave each where its
    memo has it, with the source `decided` reports (`outs` gets their targets; `steady`, if any, what
    its check needs)."""
    site = snapshot.site
    chargers = snapshot.chargers
    entry = _shape(
        site,
        chargers,
        [c[0] for c in cands],
        eff_phases,
        site.capacity_limit is not None,
        snapshot.grid_relay_open,
        len(snapshot.site_limits),
        _layout(site, chargers),
    )
    shape = entry.shape
    limits = _site_info(site).limits
    keys = shape.keys
    capacity = [_node_capacity(key, snapshot, base, limits, {}) for key in keys]
    # The fill's result: exact when every candidate gets its own cap, else within `_MARGIN`.
    exact = True
    # Whether the one candidate held below a node can be followed by `Steady` (below mains phases only).
    bound_steady = False
    weights: list[tuple[int, float]] = []
    if len(cands) == 1:
        idx, cap, src, _m = cands[0]
        mn = chargers[idx].config.min_current
        extra = cap - mn
        weight: dict[int, float] = {}
        for c, k in shape.uses[idx]:
            weight[c] = weight.get(c, 0.0) + k
        best = math.inf
        best_c = -1
        ratios: list[tuple[float, int]] = []
        for c, w in weight.items():
            # Admission at MIN, then the charger's level on what is left (`fill._fill_one`).
            if w * mn > capacity[c] + _EPS - _MARGIN:
                return False
            ratio = (capacity[c] - w * mn) / w
            ratios.append((ratio, c))
            if ratio < best:
                best, best_c = ratio, c
        if best >= extra + _MARGIN:
            target = mn + max(0.0, extra)
        elif best <= extra - _MARGIN:
            target = mn + max(0.0, best)
            src = _constraint_source(snapshot, keys[best_c], shape.sources[best_c])
            for ratio, c in ratios:
                if ratio <= best + _MARGIN and (
                    _constraint_source(snapshot, keys[c], shape.sources[c]) != src
                ):
                    return False
            exact = False
            # Every node but the mains phases stays clear of the level whatever the readings do.
            bound_steady = all(
                keys[c][0] == "" or (keys[c][0] != "#capacity" and ratio >= extra + _MARGIN)
                for ratio, c in ratios
            )
            weights = [(keys[c][1], weight[c]) for _r, c in ratios if keys[c][0] == ""]
        else:
            return False
        outs[idx] = (target, src, outs[idx][2])
    else:
        load = [0.0] * len(capacity)
        for idx, cap, src, m in cands:
            mn = chargers[idx].config.min_current
            target = mn + max(0.0, cap - mn)
            outs[idx] = (target, src, m)
            for c, k in shape.uses[idx]:
                load[c] += k * target
        # Every candidate at its cap leaves room on every node: no node binds in the fill.
        for c, cap_c in enumerate(capacity):
            if load[c] > cap_c - _MARGIN * (1.0 + len(shape.members[c])) - 1e-12 * abs(cap_c):
                return False
    rising = False
    for idx, _cap, _src, m in cands:
        t = outs[idx][0]
        if t > m.current + _EPS + _MARGIN:
            rising = True
        elif t > m.current + _EPS - _MARGIN:
            return False
    follow_margin = 0.0 if exact else _MARGIN
    if rising:
        # A charger drawing more than its target would hold the raises back: none may.
        for idx, ci in enumerate(chargers):
            a = outs[idx][0] + FOLLOW_TOL_A - follow_margin
            meas = ci.measured
            if meas[0] > a or meas[1] > a or meas[2] > a:
                return False
    deadband = site.increase_deadband
    interval = site.increase_interval_s
    hold = site.deadband_hold_s
    until = math.inf
    deadband_held = False
    for idx, _cap, _src, m in cands:
        t, src, _m = outs[idx]
        current = m.current
        if t > current + _EPS:
            rise = t - current
            if current > 0 and rise < deadband - _MARGIN:
                if now - m.last_raise >= hold:
                    # The deadband's hold is over: raised this tick (or by the interval).
                    return False
                deadband_held = True
                # Sent once `now - last_raise` reaches the hold (a little earlier here).
                until = min(until, m.last_raise + hold - 1e-3)
            elif current > 0 and rise < deadband + _MARGIN:
                return False
            elif now - m.last_raise >= interval:
                # Raised this tick: the memo changes.
                return False
            else:
                src = src_.RAMP
                # Raised once `now - last_raise` reaches the interval (a little earlier here).
                until = min(until, m.last_raise + interval - 1e-3)
        elif not exact or t != current:
            return False
        if decided[chargers[idx].config.id].source != src:
            return False
    if steady is not None:
        steady.until = until
        steady.rising = rising
        if rising:
            for idx, q in enumerate(steady.per):
                q.follow = outs[idx][0] + FOLLOW_TOL_A - follow_margin
        if exact:
            for c, key in enumerate(keys):
                node = key[0]
                if node == "" or node == "#capacity":
                    marg = _MARGIN * (1.0 + len(shape.members[c]))
                    load_c = sum(k * outs[i][0] for i, k in shape.members[c])
                    steady.nodes.append((0 if node == "" else 1, key[1], load_c, marg))
            steady.usable = True
        elif bound_steady:
            idx, cap, _src, m = cands[0]
            mn = chargers[idx].config.min_current
            steady.bound = (idx, mn, cap - mn, m.current, deadband_held, weights)
            steady.usable = True
    return True


def _constraint_source(snapshot: Snapshot, key: tuple[str, int], source: Source) -> Source:
    """The source `compute` reports for a constraint (a site cap's carries the cap's name)."""
    if key[0].startswith("#site"):
        return src_.site(snapshot.site_limits[int(key[0][5:])].source)
    return source


class Decider:
    """`compute`, or the last decisions again when the new readings cannot change them (`analyse`,
    then `Steady.check` while the site stays steady)."""

    __slots__ = ("fixed", "last", "steady")

    def __init__(self) -> None:
        self.last: Allocation | None = None
        self.steady: Steady | None = None
        # The last `compute` left every memo as it found it: only then is `analyse` tried (a tick
        # that changed a memo is seldom followed by one that could be reused).
        self.fixed = False

    def __call__(self, snapshot: Snapshot, now: float) -> Allocation:
        """The allocation `compute(snapshot, now)` returns."""
        steady = self.steady
        if steady is not None:
            alloc = steady.check(snapshot, now)
            if alloc is not None:
                return alloc
            self.steady = None
        last = self.last
        if last is not None and self.fixed:
            got = analyse(snapshot, now, last)
            if got is not None:
                self.last, self.steady = got
                return got[0]
        alloc = self.last = compute(snapshot, now)
        before = snapshot.state.chargers
        after = alloc.state.chargers
        self.fixed = len(before) == len(after) and all(m is before.get(cid) for cid, m in after.items())
        return alloc
