"""When the last `compute` still answers this tick: steady-state reuse of an idle site's allocation.

On an idle site (no charger wants current for a reason that does not lapse with time, nothing draws)
`compute` takes its idle path, and once that path has left every memo as it found it, the decisions
and the memos depend only on the chargers' inputs. While those stay the same, only the figures taken
from the mains and battery readings move: `reuse_idle` recomputes them and keeps the rest.
"""

from __future__ import annotations

from evpilot.core.balancer import ABSURD_A, SOLAR_MODES, TRIP_FACTOR, valid_reading
from evpilot.core.site import Allocation, ChargerInput, Snapshot

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


def same_input(a: ChargerInput, b: ChargerInput) -> bool:
    """Equal but for `measured_at` (a charger that draws nothing is the same stale or fresh)."""
    return (
        a.config is b.config
        and a.mode == b.mode
        and a.demand == b.demand
        and a.limit == b.limit
        and a.limit_source == b.limit_source
        and a.measured == b.measured
        and a.session_kwh == b.session_kwh
        and a.phase_mode == b.phase_mode
        and a.active_phases == b.active_phases
        and a.charging == b.charging
        and a.plugged == b.plugged
    )


def steady_idle(before: Snapshot, after: Allocation) -> bool:
    """`after` = `compute(before, ...)` took the idle path and left every memo as it was (a fixed point)."""
    if before.circuit_meters or after.state.draw_floors or after.state.trip_at is not None:
        return False
    if after.fallback or after.state.capacity_over_since is not None:
        return False
    memos = before.state.chargers
    new = after.state.chargers
    if len(new) != len(before.chargers):
        return False
    for ci in before.chargers:
        cid = ci.config.id
        m = memos.get(cid)
        if m is None or new.get(cid) is not m or not idle_input(ci):
            return False
        if ci.mode in SOLAR_MODES and m.solar_started is not None:
            return False
        decided = after.chargers[cid]
        if decided.current != 0.0:
            return False
    return True


def reuse_idle(before: Snapshot, after: Allocation, snapshot: Snapshot, now: float) -> Allocation | None:
    """What `compute(snapshot, now)` returns, from `after` = `compute(before, ...)`, or None if unsure.

    Sure when `steady_idle(before, after)`, `snapshot` carries `after`'s state and the same site, and its
    chargers' inputs are `same_input` as before's: then only the readings' figures are recomputed. A
    mains reading at trip level (which `compute` must confirm) or a state with a pending trip gives None.
    """
    site = snapshot.site
    if site is not before.site or snapshot.state is not after.state or snapshot.circuit_meters:
        return None
    chargers = snapshot.chargers
    old = before.chargers
    if len(chargers) != len(old):
        return None
    for a, b in zip(chargers, old, strict=True):
        if a is not b and not same_input(a, b):
            return None
    rejected: list[str] = []
    mains = snapshot.mains
    if mains is not None and not valid_reading(mains.currents, site.mains_limit):
        rejected.append("mains")
        mains = None
    fresh = mains is not None and now - mains.taken_at <= site.meter_timeout_s
    if mains is not None and fresh:
        cur = mains.currents
        if max(cur) > TRIP_FACTOR * site.mains_limit:
            return None
        # Nothing draws: the chargers' own current subtracted from the reading is exactly 0.
        base = (cur[0] - 0.0, cur[1] - 0.0, cur[2] - 0.0)
    else:
        base = (0.0, 0.0, 0.0)
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
    limit = site.mains_limit
    return Allocation(
        chargers=after.chargers,
        state=after.state,
        mains_fresh=fresh,
        fallback=False,
        base_load=base,
        available=(limit - base[0], limit - base[1], limit - base[2]),
        solar_surplus=-(base[0] + base[1] + base[2]) + battery if fresh else None,
        rejected=tuple(rejected),
    )
