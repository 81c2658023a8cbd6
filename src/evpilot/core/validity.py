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
node above it, or held by the increase deadband or interval below a node), the next `compute` would
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

_EPS = 1e-6
# How far from a threshold of `compute` a value found here must be for `reuse` to trust its side:
# far above the rounding of the few float operations that may differ from `compute`'s.
_MARGIN = 1e-7


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
    """`compute(snapshot, now)` when it is certain to decide exactly as `last` did, else None.

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
    limit = site.mains_limit
    timeout = site.meter_timeout_s
    if mains is None or now - mains.taken_at > timeout:
        return None
    c0, c1, c2 = mains.currents
    top = min(ABSURD_A, ABSURD_FACTOR * limit)
    if not (-ABSURD_A <= c0 <= top and -ABSURD_A <= c1 <= top and -ABSURD_A <= c2 <= top):
        return None
    if max(c0, c1, c2) > TRIP_FACTOR * limit:
        return None
    battery = 0.0
    bat = snapshot.battery_current
    if bat is not None:
        if not -ABSURD_A <= bat <= ABSURD_A:
            return None
        at = snapshot.battery_at
        if at is not None and now - at <= site.battery_timeout_s:
            battery = bat
    chargers = snapshot.chargers
    decided = last.chargers
    memos = snapshot.state.chargers
    last_memos = lst.chargers
    n = len(chargers)
    if n != len(decided) or n != len(last_memos):
        return None
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
        if ci.measured_at is not None and now - ci.measured_at > timeout:
            return None
        if exclude and (a0 != 0.0 or a1 != 0.0 or a2 != 0.0):
            d = cfg.phase_map.to_mains(ci.measured)
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
        src: Source
        if ci.mode == "off":
            src = src_.OFF
        elif ci.limit < mn - _EPS:
            src = ci.limit_source
        elif ci.demand == 0:
            src = src_.IDLE
        elif m.paused_until > now:
            src = src_.SHORTAGE
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
            if limited != m.ev_limited or (auto and ph != 3):
                return None
            cands.append((idx, cap, src, m))
            outs.append((0.0, src, m))
            continue
        # Not a candidate: 0 A from its own cap's source, which must be what it had.
        if auto or m.ev_limited or m.current != 0.0 or d_last.source != src:
            return None
        outs.append((0.0, src, m))
    base = (c0 - ev0, c1 - ev1, c2 - ev2) if exclude else (c0 - 0.0, c1 - 0.0, c2 - 0.0)
    if cands and not _held(snapshot, now, base, cands, eff_phases, outs, decided):
        return None
    return Allocation(
        decided,
        lst,
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
) -> bool:
    """`reuse` for the chargers that want current: the fill and the pacing leave each where its memo
    has it, with the source `decided` reports (`outs` gets their targets)."""
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
    capacity = [_node_capacity(key, snapshot, base, limits, {}) for key in shape.keys]
    # The fill's result: exact when every candidate gets its own cap, else within `_MARGIN`.
    exact = True
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
            src = _constraint_source(snapshot, shape.keys[best_c], shape.sources[best_c])
            for ratio, c in ratios:
                if ratio <= best + _MARGIN and (
                    _constraint_source(snapshot, shape.keys[c], shape.sources[c]) != src
                ):
                    return False
            exact = False
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
    if rising:
        # A charger drawing more than its target would hold the raises back: none may.
        for idx, ci in enumerate(chargers):
            a = outs[idx][0] + FOLLOW_TOL_A - (0.0 if exact else _MARGIN)
            meas = ci.measured
            if meas[0] > a or meas[1] > a or meas[2] > a:
                return False
    deadband = site.increase_deadband
    for idx, _cap, _src, m in cands:
        t, src, _m = outs[idx]
        current = m.current
        if t > current + _EPS:
            rise = t - current
            if current > 0 and rise < deadband - _MARGIN:
                pass
            elif current > 0 and rise < deadband + _MARGIN:
                return False
            elif now - m.last_raise >= site.increase_interval_s:
                # Raised this tick: the memo changes.
                return False
            else:
                src = src_.RAMP
        elif not exact or t != current:
            return False
        if decided[chargers[idx].config.id].source != src:
            return False
    return True


def _constraint_source(snapshot: Snapshot, key: tuple[str, int], source: Source) -> Source:
    """The source `compute` reports for a constraint (a site cap's carries the cap's name)."""
    if key[0].startswith("#site"):
        return src_.site(snapshot.site_limits[int(key[0][5:])].source)
    return source
