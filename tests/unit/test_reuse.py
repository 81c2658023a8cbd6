"""Reusing the last decisions (`core.validity.reuse`) returns exactly what `compute` would.

Sites are drawn as for the safety properties (every non-solar mode, nested circuits with and without
meters, capacity, site caps, the relay, 1- and 3-phase chargers in every rotation and phase mode),
then run tick after tick the way the engine runs them: each tick's state is the last result's, the
cars draw about what they were given (or less, or a little more), the house load and the time move
by small steps, and now and then a reading goes stale, a reading is refused or a charger's inputs
change. Whenever `reuse` answers, its answer must equal `compute` on the same snapshot.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import event, given
from hypothesis import strategies as st

from evpilot.core import sources
from evpilot.core.balancer import compute
from evpilot.core.charger import ChargerConfig, mains_draw
from evpilot.core.site import (
    Allocation,
    BalancerState,
    ChargerInput,
    ChargerMemo,
    Reading,
    SiteConfig,
    SiteLimit,
    Snapshot,
)
from evpilot.core.validity import Decider, reuse
from tests.unit.test_safety_properties import NOW, bounded, sites

_TICK = st.tuples(
    # Seconds since the last tick.
    st.sampled_from([1.0, 1.0, 1.0, 2.0, 5.0, 30.0]),
    # How each car follows its setpoint (a factor of what it was given), drawn per charger in turn.
    st.lists(st.sampled_from([1.0, 1.0, 1.0, 0.98, 0.5, 0.0, 1.02, 1.5]), min_size=6, max_size=6),
    # The house load's change on each phase (A).
    st.tuples(*[st.sampled_from([0.0, 0.0, 0.01, -0.01, 0.2, -0.2, 3.0, -3.0])] * 3),
    # Something else happening this tick.
    st.sampled_from(
        ["", "", "", "", "", "stale mains", "trip", "nan", "stale charger", "off", "limit", "lagging", "held"]
    ),
)


def _next(
    snap: Snapshot, out: Allocation, now: float, tick: tuple[float, list[float], tuple[float, ...], str]
) -> Snapshot:
    """The snapshot of the tick after `snap` decided `out`, `tick[0]` seconds later (`now`)."""
    _dt, follow, house_delta, what = tick
    assert snap.mains is not None
    chargers: list[ChargerInput] = []
    ev_before = [0.0, 0.0, 0.0]
    ev_after = [0.0, 0.0, 0.0]
    for k, ci in enumerate(snap.chargers):
        a = out.chargers[ci.config.id]
        x = a.current * follow[k % len(follow)]
        on = (
            3
            if ci.config.phases == 3
            and a.phases == 3
            and not snap.state.chargers[ci.config.id].single_phase_car
            else 1
        )
        measured = (x, x, x) if on == 3 else (x, 0.0, 0.0)
        before = mains_draw(ci.config, ci.measured)
        after = mains_draw(ci.config, measured)
        for p in range(3):
            ev_before[p] += before[p]
            ev_after[p] += after[p]
        new = replace(
            ci,
            measured=measured,
            measured_at=now - 1.0,
            session_kwh=ci.session_kwh + x * 0.0002,
            charging=x > 1.0,
            active_phases=a.phases if ci.config.phases == 3 else 1,
        )
        if k == 0 and what == "stale charger":
            new = replace(new, measured_at=now - 60.0)
        if what == "lagging":
            # Read before the mains, and signaled less since (maybe below its draw).
            new = replace(new, measured_at=now - 2.0, limit_low=x * follow[(k + 1) % len(follow)])
        if k == 0 and what == "held":
            new = replace(new, held=3.0)
        if k == 0 and what == "off":
            new = replace(new, mode="off")
        if k == 0 and what == "limit":
            new = replace(new, limit=max(0.0, new.limit - 3.0), limit_source=sources.USER)
        chargers.append(new)
    currents = tuple(snap.mains.currents[p] - ev_before[p] + ev_after[p] + house_delta[p] for p in range(3))
    taken = now - 1.0
    if what == "stale mains":
        taken = now - 60.0
    elif what == "trip":
        currents = (2.5 * snap.site.mains_limit, currents[1], currents[2])
    elif what == "nan":
        currents = (float("nan"), currents[1], currents[2])
    return replace(
        snap,
        chargers=tuple(chargers),
        mains=Reading((currents[0], currents[1], currents[2]), taken),
        circuit_meters={k: Reading(r.currents, now - 1.0) for k, r in snap.circuit_meters.items()},
        battery_at=None if snap.battery_at is None else now - 1.0,
        state=out.state,
    )


def _run(snap: Snapshot, ticks: list[tuple[float, list[float], tuple[float, ...], str]]) -> int:
    """Run `snap` through `ticks` as the engine does; returns how many ticks `reuse` answered.

    Beside `reuse` on each tick, a `Decider` runs the ticks as the engine does (`Steady.check` while
    the site stays steady): both must give what `compute` gives.
    """
    now = NOW
    last = compute(snap, now)
    decide = Decider()
    assert decide(snap, now) == last
    hits = 0
    for tick in ticks:
        now += tick[0]
        snap = _next(snap, last, now, tick)
        full = compute(snap, now)
        again = reuse(snap, now, last)
        if again is not None:
            assert again == full
            hits += 1
        steady = decide.steady
        if steady is not None and steady.check(snap, now) is not None:
            event("steady")
        assert decide(snap, now) == full
        last = full if again is None else again
    return hits


@bounded
@given(sites(modes=("off", "normal", "smart", "smart")), st.lists(_TICK, min_size=1, max_size=40))
def test_reuse_is_compute(
    snap: Snapshot, ticks: list[tuple[float, list[float], tuple[float, ...], str]]
) -> None:
    hits = _run(snap, ticks)
    event("reused" if hits else "never reused")


@bounded
@given(
    sites(modes=("smart", "normal")).map(
        # Plain sites, the kind `reuse` answers for most: no meter on any circuit.
        lambda s: replace(
            s,
            site=replace(s.site, circuits=tuple(replace(c, metered=False) for c in s.site.circuits)),
            circuit_meters={},
        )
    ),
    st.lists(_TICK, min_size=1, max_size=60),
)
def test_reuse_is_compute_on_plain_sites(
    snap: Snapshot, ticks: list[tuple[float, list[float], tuple[float, ...], str]]
) -> None:
    hits = _run(snap, ticks)
    event("reused" if hits else "never reused")


def _one(measured: float, memo: ChargerMemo, house: float, **site: object) -> tuple[Snapshot, float]:
    cfg = ChargerConfig(id="a", max_current=32)
    ci = ChargerInput(
        cfg, "smart", 2, 32.0, sources.MAX, (measured,) * 3, 3.0, "not_present", 3, True, NOW - 1, True
    )
    mains = Reading((house + measured,) * 3, NOW - 1)
    return (
        Snapshot(SiteConfig(**site), (ci,), mains, state=BalancerState({"a": memo})),  # type: ignore[arg-type]
        NOW,
    )


def test_reuse_answers_a_held_charger_and_refuses_what_could_move_it() -> None:
    # 25 A mains, 5 A of house load: 20 A is what the charger may have, it has 19.8 A (within
    # the 0.5 A increase deadband, raised 30 s ago: the rise waits for `deadband_hold_s`), its car
    # draws that.
    memo = ChargerMemo(current=19.8, phases=3, last_raise=NOW - 30, running_since=NOW - 500, car_phases=3)
    snap, now = _one(19.8, memo, 5.0)
    last = compute(snap, now)
    assert last.state.chargers["a"] is memo
    assert last.chargers["a"].source == sources.MAINS
    again = reuse(snap, now, last)
    assert again is not None and again == compute(snap, now)
    # Then the same again, through the steady check.
    decide = Decider()
    decide(snap, now)
    decide(snap, now)
    assert decide.steady is not None
    assert decide.steady.check(snap, now + 1) == compute(snap, now + 1)
    # Once the deadband's hold is over the rise goes out: the steady check no longer answers.
    hold_end = memo.last_raise + SiteConfig().deadband_hold_s
    later = replace(
        snap,
        mains=replace(snap.mains, taken_at=hold_end - 1),  # type: ignore[type-var]
        chargers=(replace(snap.chargers[0], measured_at=hold_end - 1),),
    )
    assert compute(later, hold_end).chargers["a"].current == 20.0
    assert decide.steady.check(later, hold_end) is None
    assert reuse(later, hold_end, last) is None
    # The house load moves a little: still held, new figures.
    moved = replace(snap, mains=Reading((24.9, 24.85, 24.95), NOW - 1))
    again = reuse(moved, now, last)
    assert again is not None and again == compute(moved, now)
    assert again.base_load != last.base_load
    # Less room than the charger has (it must come down), or room for a raise: not reused.
    for m in (25.0 + 0.3, 25.0 - 0.6):
        other = replace(snap, mains=Reading((m, 24.0, 24.0), NOW - 1))
        assert compute(other, now).state.chargers["a"] is not memo
        assert reuse(other, now, last) is None
    # A stale or refused mains reading, one at trip level, a stale charger reading, a site cap that
    # binds, a mode change: not reused.
    for bad in (
        replace(snap, mains=Reading((24.8,) * 3, NOW - 60)),
        replace(snap, mains=Reading((float("nan"), 24.8, 24.8), NOW - 1)),
        replace(snap, mains=Reading((60.0, 24.8, 24.8), NOW - 1)),
        replace(snap, chargers=(replace(snap.chargers[0], measured_at=NOW - 60),)),
        replace(snap, site_limits=(SiteLimit(10.0, "user"),)),
        replace(snap, chargers=(replace(snap.chargers[0], mode="off"),)),
    ):
        assert reuse(bad, now, last) is None
    # Memos that are not the last result's: not reused.
    assert reuse(replace(snap, state=BalancerState({"a": replace(memo)})), now, last) is None


def test_reuse_answers_a_charger_at_its_own_cap() -> None:
    # The car takes 6 A of 16 offered: capped near its draw (source `ev`), lots of room on the mains.
    memo = ChargerMemo(
        current=6.0, phases=3, last_raise=NOW - 100, ev_limited=True, running_since=NOW - 500, car_phases=3
    )
    snap, now = _one(3.5, memo, 1.0, mains_limit=40)
    last = compute(snap, now)
    assert last.state.chargers["a"] is memo and last.chargers["a"].source == sources.EV
    for draw in (3.5, 3.9, 0.5):
        moved = replace(
            snap,
            chargers=(replace(snap.chargers[0], measured=(draw,) * 3),),
            mains=Reading((1.0 + draw, 1.2 + draw, 0.7 + draw), NOW - 1),
        )
        again = reuse(moved, now, last)
        assert again is not None and again == compute(moved, now)
    # Drawing more: the cap lifts (and the setpoint with it): not reused.
    moved = replace(snap, chargers=(replace(snap.chargers[0], measured=(5.5,) * 3),))
    assert compute(moved, now).state.chargers["a"] is not memo
    assert reuse(moved, now, last) is None
