"""Leaving settled chargers out of `compute` (`core.validity`) changes no decision, memo or figure.

Sites are drawn with idle chargers for every reason a charger has to be left out (off, its own
limit below MIN, no demand, plugged or not, memos from earlier sessions) next to chargers that
want current and draw it, then run tick after tick with new mains and battery readings (fresh,
stale, refused, at trip level). On each tick the chargers `settled` on the tick before are left
out, and the result put back together (`merge`, or `idle_allocation` when all are left out) must
equal `compute` over every charger.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import event, given
from hypothesis import strategies as st

from evpilot.core import sources
from evpilot.core.balancer import compute
from evpilot.core.charger import ChargerConfig
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
from evpilot.core.validity import idle_allocation, idle_input, may_leave_out, merge, settled

NOW = 1_000_000.0


@st.composite
def sites(draw: st.DrawFn) -> Snapshot:
    site = SiteConfig(
        mains_limit=draw(st.floats(10, 200)),
        exclude_self_current=draw(st.booleans()),
        mode=draw(st.sampled_from(["smart", "normal", "solar"])),
        solar=replace(SiteConfig().solar, start_current=1.0, stop_min=0.5),
        ramp_step=draw(st.sampled_from([4.0, 80.0])),
    )
    inputs = []
    memos = {}
    for i in range(draw(st.integers(1, 6))):
        phases = draw(st.sampled_from([1, 3]))
        cfg = ChargerConfig(id=f"c{i}", phases=phases, phase=draw(st.integers(1, 3)))
        why = draw(st.sampled_from(["off", "limit", "demand", "charging", "charging"]))
        charging = why == "charging"
        drawn = draw(st.floats(6, 32)) if charging else 0.0
        inputs.append(
            ChargerInput(
                cfg,
                "off" if why == "off" else draw(st.sampled_from(["smart", "normal", "solar", "min+solar"])),
                2 if charging else 0 if why == "demand" else draw(st.integers(0, 2)),
                draw(st.floats(0, 5.9)) if why == "limit" else 32.0,
                sources.USER,
                (drawn, drawn if phases == 3 else 0.0, drawn if phases == 3 else 0.0),
                draw(st.floats(0, 50)),
                draw(st.sampled_from(["not_present", "always_3p", "always_1p"])),
                phases,
                charging,
                NOW - draw(st.floats(0, 30)),
                charging or draw(st.booleans()),
            )
        )
        if draw(st.booleans()):
            memos[cfg.id] = ChargerMemo(
                current=drawn if charging else draw(st.sampled_from([0.0, 10.0])),
                phases=phases,
                car_phases=draw(st.sampled_from([None, 1, 3])),
                single_phase_car=draw(st.booleans()),
                switches=draw(st.integers(0, 3)),
                last_raise=NOW - 100.0,
                stopped_at=NOW - 500.0,
            )
    return Snapshot(
        site=site, chargers=tuple(inputs), mains=Reading((5.0, 6.0, 7.0), NOW), state=BalancerState(memos)
    )


readings = st.one_of(
    st.none(),
    st.tuples(st.tuples(st.floats(-100, 500), st.floats(-100, 500), st.floats(-100, 500)), st.floats(0, 30)),
    st.just(((float("nan"), 1.0, 1.0), 0.0)),
    st.just(((2000.0, 1.0, 1.0), 0.0)),
)
batteries = st.one_of(st.none(), st.tuples(st.floats(-50, 50), st.floats(0, 30)), st.just((5000.0, 0.0)))


def without(
    snapshot: Snapshot, kept: dict[str, tuple[ChargerAllocation, ChargerMemo]], now: float
) -> Allocation:
    """What the engine does: `compute` over the chargers not left out, put back together."""
    order = [ci.config.id for ci in snapshot.chargers]
    rest = tuple(ci for ci in snapshot.chargers if ci.config.id not in kept)
    if not rest:
        decisions = {cid: kept[cid][0] for cid in order}
        state = BalancerState({cid: kept[cid][1] for cid in order})
        return idle_allocation(
            snapshot.site,
            snapshot.mains,
            snapshot.battery_current,
            snapshot.battery_at,
            now,
            decisions,
            state,
        )
    return merge(compute(replace(snapshot, chargers=rest), now), order, kept)


@given(sites(), st.lists(st.tuples(st.floats(1, 100), readings, batteries), min_size=1, max_size=10))
def test_leaving_settled_chargers_out_changes_nothing(
    snapshot: Snapshot, ticks: list[tuple[float, object, object]]
) -> None:
    now = NOW
    before = snapshot
    after = compute(before, now)
    for dt, reading, battery in ticks:
        kept = {
            ci.config.id: (after.chargers[ci.config.id], after.state.chargers[ci.config.id])
            for ci in before.chargers
            if settled(
                ci,
                before.state.chargers.get(ci.config.id),
                after.state.chargers.get(ci.config.id),
                after.chargers[ci.config.id],
            )
        }
        now += dt
        mains = None if reading is None else Reading(reading[0], now - reading[1])  # type: ignore[index]
        bat, bat_at = (None, None) if battery is None else (battery[0], now - battery[1])  # type: ignore[index]
        # The same inputs but for the time of the readings.
        chargers = tuple(replace(ci, measured_at=now - 1.0) for ci in before.chargers)
        snap = replace(
            before, chargers=chargers, mains=mains, battery_current=bat, battery_at=bat_at, state=after.state
        )
        full = compute(snap, now)
        if kept and may_leave_out(snap.site, mains, snap.circuit_meters, snap.state):
            assert without(snap, kept, now) == full
            event("left out all" if len(kept) == len(snap.chargers) else "left out some")
        before, after = snap, full


def test_settled_needs_a_fixed_point_at_zero() -> None:
    cfg = ChargerConfig(id="a")
    ci = ChargerInput(
        cfg, "smart", 0, 32.0, sources.MAX, (0.0, 0.0, 0.0), 0.0, "not_present", 3, False, NOW, True
    )
    m = ChargerMemo()
    idle = ChargerAllocation(0.0, 3, sources.IDLE)
    assert settled(ci, m, m, idle)
    # A memo `compute` changed, a trip, current given, a draw, a demand that returns by itself (a
    # shortage pause ends) or a solar start pending: not settled.
    assert not settled(ci, m, replace(m), idle)
    assert not settled(ci, None, None, idle)
    assert not settled(ci, m, m, ChargerAllocation(0.0, 3, sources.TRIP))
    assert not settled(ci, m, m, ChargerAllocation(6.0, 3, sources.MAINS))
    assert not settled(replace(ci, measured=(0.0, 1.0, 0.0)), m, m, idle)
    assert not idle_input(replace(ci, demand=2))
    solar = replace(m, solar_started=NOW)
    assert not settled(replace(ci, mode="solar"), solar, solar, idle)
    # A trip pending or possible, or a circuit meter's reading: every charger is computed.
    site = SiteConfig()
    assert may_leave_out(site, Reading((1.0, 1.0, 1.0), NOW), {}, BalancerState())
    assert not may_leave_out(site, Reading((51.0, 1.0, 1.0), NOW), {}, BalancerState())
    assert not may_leave_out(site, None, {}, BalancerState(trip_at=NOW))
    assert not may_leave_out(site, None, {"x": Reading((1.0, 1.0, 1.0), NOW)}, BalancerState())
