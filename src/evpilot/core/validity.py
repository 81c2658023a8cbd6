"""Which chargers `compute` need not see again: settled ones keep their decision and memo.

A charger `compute` leaves out for a reason that does not lapse with time (off, its own limit below
MIN, no demand) and that draws nothing gets 0 A; once `compute` has left its memo as it found it
(a fixed point), its decision and memo depend only on its own input, whatever the other chargers,
the readings and the time do. So while that input stays the same, the caller may leave it out of
the snapshot and put its decision and memo back afterwards (`merge`), or, when every charger is
left out, only recompute the figures taken from the readings (`idle_allocation`). Two things see
every charger: a trip (pending, or a reading at trip level: everyone stops) and a circuit meter's
reading (draw floors are kept per charger), so `may_leave_out` is False then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from evpilot.core.balancer import ABSURD_A, ABSURD_FACTOR, SOLAR_MODES, TRIP_FACTOR
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerAllocation,
    ChargerInput,
    ChargerMemo,
    Reading,
    SiteConfig,
)
from evpilot.core.sources import SourceKind

_EPS = 1e-6


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
