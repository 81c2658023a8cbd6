"""A charger reading older than the mains reading never makes the house look smaller than it is.

The other load is the mains reading minus what the chargers draw. A setpoint-level charger (an OCPP
wallbox reporting every 10 s, a polled Modbus box) may still report the draw from before a cut when
the mains reading already shows the lower one: subtracting the old draw would make the house look
smaller by the cut and hand the difference out again. `compute` subtracts at most the lowest current
signaled since the reading (`ChargerInput.limit_low`), and counts a charger that does not follow
its limits at what it may draw (`ChargerInput.held`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from evpilot.core import sources
from evpilot.core.balancer import compute, phases_of
from evpilot.core.charger import SIGNAL_LOG_MAX, Charger, ChargerConfig, mains_draw
from evpilot.core.site import BalancerState, ChargerInput, ChargerMemo, Reading, SiteConfig, Snapshot

NOW = 1_000_000.0
EPS = 1e-6


@dataclass(frozen=True)
class Case:
    """A site whose chargers' readings lag the mains; `draws` is what each car draws now."""

    snap: Snapshot
    house: tuple[float, float, float]
    draws: dict[str, tuple[float, float, float]]


def _charger(
    cid: str, phases: int, phase: int, demand: float, then: float, now_limit: float, low: float, age: float
) -> tuple[ChargerInput, ChargerMemo, tuple[float, float, float]]:
    """A car wanting `demand` A; `then` was signaled when it was read `age` s ago, `now_limit` is
    signaled now and `low` the lowest in between (the car follows what it is signaled)."""
    cfg = ChargerConfig(id=cid, max_current=32.0, min_current=6.0, phases=phases, phase=phase)
    read = min(demand, then)
    measured = (read, read, read) if phases == 3 else (read, 0.0, 0.0)
    drawn = min(demand, now_limit)
    draw_now = (drawn, drawn, drawn) if phases == 3 else (drawn, 0.0, 0.0)
    ci = ChargerInput(
        config=cfg,
        mode="smart",
        demand=2,
        limit=32.0,
        limit_source=sources.MAX,
        measured=measured,
        active_phases=phases,
        charging=read > 0.5,
        measured_at=NOW - age,
        limit_low=low,
    )
    return ci, ChargerMemo(current=now_limit, phases=phases), mains_draw(cfg, draw_now)


@st.composite
def lagging_sites(draw: st.DrawFn) -> Case:
    mains_limit = draw(st.floats(40, 250))
    site = SiteConfig(mains_limit=mains_limit, ramp_step=80.0, meter_timeout_s=11.0)
    inputs, memos, draws = [], {}, {}
    total = [0.0, 0.0, 0.0]
    for i in range(draw(st.integers(1, 8))):
        phases = draw(st.sampled_from([1, 3]))
        then = draw(st.floats(0, 32))
        now_limit = draw(st.floats(0, 32))
        low = draw(st.floats(0, min(then, now_limit)))
        ci, memo, d = _charger(
            f"c{i}",
            phases,
            draw(st.integers(1, 3)),
            draw(st.floats(0, 32)),
            then,
            now_limit,
            low,
            draw(st.floats(0.5, 10.5)),
        )
        inputs.append(ci)
        memos[ci.config.id] = memo
        draws[ci.config.id] = d
        total = [total[p] + d[p] for p in range(3)]
    house = tuple(draw(st.floats(0, mains_limit)) for _ in range(3))
    mains = Reading((house[0] + total[0], house[1] + total[1], house[2] + total[2]), NOW - 0.2)
    snap = Snapshot(site=site, chargers=tuple(inputs), mains=mains, state=BalancerState(memos))
    return Case(snap, (house[0], house[1], house[2]), draws)


# The bench's case: three 1-phase wallboxes on L1 cut from 16 A to 6 A, their readings from before the
# cut, the house at 170 A under a 200 A mains.
_BENCH = Case(
    Snapshot(
        site=SiteConfig(mains_limit=200.0, ramp_step=80.0, meter_timeout_s=11.0),
        chargers=tuple(_charger(f"w{i}", 1, 1, 16.0, 16.0, 6.0, 6.0, 8.0)[0] for i in range(3)),
        mains=Reading((188.0, 170.0, 170.0), NOW - 0.2),
        state=BalancerState({f"w{i}": ChargerMemo(current=6.0, phases=1) for i in range(3)}),
    ),
    (170.0, 170.0, 170.0),
    {f"w{i}": (6.0, 0.0, 0.0) for i in range(3)},
)


@given(lagging_sites())
@example(_BENCH)
@settings(deadline=None)
def test_lagging_readings_never_make_the_house_look_smaller(case: Case) -> None:
    snap = case.snap
    out = compute(snap, NOW)
    for p in range(3):
        assert out.base_load[p] >= case.house[p] - EPS, (p, out.base_load, case.house)
    # What the chargers draw once they follow the new allocation, plus the real house, fits the mains.
    load = list(case.house)
    for ci in snap.chargers:
        a = out.chargers[ci.config.id]
        for p in phases_of(ci, a.phases):
            load[p] += a.current
    if any(a.current > 0 for a in out.chargers.values()):
        for p in range(3):
            if case.house[p] <= snap.site.mains_limit:
                assert load[p] <= snap.site.mains_limit + 0.02, (p, load, out.chargers)


def test_the_bench_case_gives_back_only_what_the_house_leaves() -> None:
    out = compute(_BENCH.snap, NOW)
    assert out.base_load[0] == 170.0
    assert [out.chargers[f"w{i}"].current for i in range(3)] == [10.0, 10.0, 10.0]


def test_a_reading_newer_than_the_mains_is_subtracted_as_it_is() -> None:
    ci, memo, _ = _charger("w0", 1, 1, 16.0, 16.0, 6.0, 6.0, 0.0)
    snap = Snapshot(
        site=SiteConfig(mains_limit=200.0, ramp_step=80.0),
        chargers=(ci,),
        mains=Reading((120.0, 100.0, 100.0), NOW - 1.0),
        state=BalancerState({"w0": memo}),
    )
    assert compute(snap, NOW).base_load[0] == 104.0


@given(
    held=st.floats(1, 32),
    reading=st.floats(0, 32),
    house=st.floats(0, 150),
    others=st.integers(0, 4),
)
@settings(deadline=None)
def test_a_charger_that_holds_a_higher_limit_counts_at_it(
    held: float, reading: float, house: float, others: int
) -> None:
    """A wallbox that refused its lower limit may draw `held` whatever it is told: the rest fits with it."""
    cfg = ChargerConfig(id="x", max_current=32.0, min_current=6.0, phases=1, phase=1)
    x = ChargerInput(
        config=cfg,
        mode="smart",
        demand=2,
        limit=32.0,
        limit_source=sources.MAX,
        measured=(reading, 0.0, 0.0),
        active_phases=1,
        charging=reading > 0.5,
        measured_at=NOW - 1.0,
        held=held,
    )
    rest = [_charger(f"o{i}", 1, 1, 0.0, 0.0, 0.0, 0.0, 1.0)[0] for i in range(others)]
    memos = {ci.config.id: ChargerMemo(current=0.0, phases=1) for ci in rest}
    memos["x"] = ChargerMemo(current=0.0, phases=1)
    snap = Snapshot(
        site=SiteConfig(mains_limit=200.0, ramp_step=80.0),
        chargers=(x, *rest),
        mains=Reading((house + reading, house, house), NOW - 0.5),
        state=BalancerState(memos),
    )
    out = compute(snap, NOW)
    assert out.base_load[0] >= house + held - EPS
    told = sum(out.chargers[ci.config.id].current for ci in rest)
    # x draws at most max(held, its allocation); the others at most theirs.
    assert house + max(held, out.chargers["x"].current) + told <= 200.0 + 0.02


def test_lowest_signaled_covers_every_limit_since_the_reading() -> None:
    ch = Charger.create(ChargerConfig(id="c", max_current=32.0))
    assert ch.lowest_signaled(0.0) == 0.0
    ch.signal_log[:] = [(10.0, 16.0), (20.0, 8.0), (30.0, 12.0)]
    ch.signaled = 12.0
    assert ch.lowest_signaled(15.0) == 8.0  # 16 A was in force at 15 s, then 8 A, now 12 A
    assert ch.signal_log == [(10.0, 16.0), (20.0, 8.0), (30.0, 12.0)]
    assert ch.lowest_signaled(25.0) == 8.0  # 8 A was in force at 25 s
    # What came before the one in force at 25 s is no longer needed (readings only move forward).
    assert ch.signal_log == [(20.0, 8.0), (30.0, 12.0)]
    assert ch.lowest_signaled(35.0) == 12.0  # nothing changed since: the one in force
    # Before the oldest change kept: unknown, so nothing may be subtracted.
    assert ch.lowest_signaled(5.0) == 0.0


def test_signaled_changes_are_logged_and_bounded() -> None:
    ch = Charger.create(ChargerConfig(id="c", max_current=32.0, phases=1))
    ch.letter = "C"
    t = 0.0
    for i in range(SIGNAL_LOG_MAX + 20):
        t += 6.0  # past the increase interval each time
        ch.apply(t, 8.0 if i % 2 else 16.0, sources.MAINS, 1, 5.0)
    assert len(ch.signal_log) == SIGNAL_LOG_MAX
    assert ch.signal_log[-1] == (t, ch.signaled)
    # Merging keeps the lowest: every window from the first change on still sees 8 A.
    assert ch.lowest_signaled(7.0) == 8.0


def test_a_min_that_fits_but_for_old_draws_waits_without_a_shortage_pause() -> None:
    """25 A mains, house 17 A: a wallbox cut from 20 A to 8 A whose car has not followed yet (the
    mains shows 37 A) looks like a 29 A house until it reports again; it gets nothing meanwhile but
    is not paused, so it is back at its next reading."""
    ci, memo, _ = _charger("w0", 3, 1, 20.0, 20.0, 8.0, 8.0, 3.0)
    site = SiteConfig(mains_limit=25.0, ramp_step=80.0)
    lagging = Snapshot(
        site=site,
        chargers=(ci,),
        mains=Reading((37.0, 37.0, 37.0), NOW - 0.2),
        state=BalancerState({"w0": memo}),
    )
    out = compute(lagging, NOW)
    assert out.base_load == (29.0, 29.0, 29.0)
    assert out.chargers["w0"].current == 0.0 and out.chargers["w0"].source is sources.SHORTAGE
    assert out.state.chargers["w0"].paused_until < NOW
    # The same 29 A house seen with a current reading: a real shortage, paused.
    fresh = Snapshot(
        site=site,
        chargers=(replace(ci, measured=(8.0, 8.0, 8.0), measured_at=NOW - 0.1),),
        mains=Reading((37.0, 37.0, 37.0), NOW - 0.2),
        state=BalancerState({"w0": memo}),
    )
    out = compute(fresh, NOW)
    assert out.chargers["w0"].current == 0.0
    assert out.state.chargers["w0"].paused_until == NOW + site.shortage_pause_s


def test_a_min_that_fits_but_for_a_draw_signaled_since_the_reading_waits() -> None:
    """25 A mains, house 17 A: a wallbox signaled 6 A after it last read 0 A (its car started unseen)
    shows as a 23 A house; its MIN would fit but for that draw, so it waits (0 A) without a pause.
    The same reading with nothing signaled since is a real shortage, paused."""
    cfg = ChargerConfig(id="w0", max_current=32.0, min_current=6.0, phases=3)
    ci = ChargerInput(
        config=cfg,
        mode="smart",
        demand=2,
        limit=32.0,
        limit_source=sources.MAX,
        measured=(0.0, 0.0, 0.0),
        active_phases=3,
        charging=False,
        measured_at=NOW - 1.0,
        limit_high=6.0,
    )
    site = SiteConfig(mains_limit=25.0, ramp_step=80.0)
    memo = ChargerMemo(current=6.0, phases=3)

    def run(c: ChargerInput) -> tuple[float, float]:
        snap = Snapshot(
            site=site,
            chargers=(c,),
            mains=Reading((23.0, 23.0, 23.0), NOW - 0.2),
            state=BalancerState({"w0": memo}),
        )
        out = compute(snap, NOW)
        return out.chargers["w0"].current, out.state.chargers["w0"].paused_until

    current, paused_until = run(ci)
    assert current == 0.0 and paused_until < NOW
    current, paused_until = run(replace(ci, limit_high=0.0))
    assert current == 0.0 and paused_until == NOW + site.shortage_pause_s
