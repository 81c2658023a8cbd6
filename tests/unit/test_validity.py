"""`core.validity.reuse_idle` answers exactly what `compute` would, or declines.

Idle sites are drawn with every reason a charger has to be left out (off, its own limit below MIN,
no demand, plugged or not, 1- and 3-phase, memos from earlier sessions), brought to the fixed point
of `compute`, and then asked again with new mains and battery readings (fresh, stale, refused,
at trip level) and new times.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from evpilot.core.balancer import compute
from evpilot.core.charger import ChargerConfig
from evpilot.core.site import BalancerState, ChargerInput, ChargerMemo, Reading, SiteConfig, Snapshot
from evpilot.core.validity import idle_input, reuse_idle, steady_idle

NOW = 1_000_000.0


@st.composite
def idle_sites(draw: st.DrawFn) -> Snapshot:
    site = SiteConfig(
        mains_limit=draw(st.floats(10, 200)),
        exclude_self_current=draw(st.booleans()),
        mode=draw(st.sampled_from(["smart", "normal", "solar", "off"])),
    )
    inputs = []
    memos = {}
    for i in range(draw(st.integers(1, 6))):
        phases = draw(st.sampled_from([1, 3]))
        cfg = ChargerConfig(id=f"c{i}", phases=phases, phase=draw(st.integers(1, 3)))
        why = draw(st.sampled_from(["off", "limit", "demand"]))
        inputs.append(
            ChargerInput(
                cfg,
                "off" if why == "off" else draw(st.sampled_from(["smart", "normal", "solar", "min+solar"])),
                0 if why == "demand" else draw(st.integers(0, 2)),
                draw(st.floats(0, 5.9)) if why == "limit" else 32.0,
                "user",
                (0.0, 0.0, 0.0),
                draw(st.floats(0, 50)),
                draw(st.sampled_from(["not_present", "always_3p", "always_1p"])),
                phases,
                False,
                NOW - draw(st.floats(0, 30)),
                draw(st.booleans()),
            )
        )
        if draw(st.booleans()):
            memos[cfg.id] = ChargerMemo(
                current=draw(st.sampled_from([0.0, 10.0])),
                phases=phases,
                car_phases=draw(st.sampled_from([None, 1, 3])),
                single_phase_car=draw(st.booleans()),
                switches=draw(st.integers(0, 3)),
                last_raise=NOW - 100.0,
                stopped_at=NOW - 500.0,
            )
    return Snapshot(
        site=site,
        chargers=tuple(inputs),
        mains=Reading((5.0, 6.0, 7.0), NOW),
        state=BalancerState(memos),
    )


readings = st.one_of(
    st.none(),
    st.tuples(
        st.tuples(st.floats(-100, 500), st.floats(-100, 500), st.floats(-100, 500)),
        st.floats(0, 30),
    ),
    st.just(((float("nan"), 1.0, 1.0), 0.0)),
    st.just(((2000.0, 1.0, 1.0), 0.0)),
)
batteries = st.one_of(st.none(), st.tuples(st.floats(-50, 50), st.floats(0, 30)), st.just((5000.0, 0.0)))


@given(idle_sites(), st.lists(st.tuples(st.floats(1, 100), readings, batteries), min_size=1, max_size=8))
def test_reuse_equals_compute(snapshot: Snapshot, ticks: list[tuple[float, object, object]]) -> None:
    assert all(idle_input(ci) for ci in snapshot.chargers)
    now = NOW
    # Two ticks reach the fixed point (the first may reset memos of unplugged chargers).
    before = snapshot
    after = compute(before, now)
    for _ in range(2):
        before = replace(before, state=after.state)
        after = compute(before, now)
    assert steady_idle(before, after)
    reused = 0
    for dt, reading, battery in ticks:
        now += dt
        mains = None if reading is None else Reading(reading[0], now - reading[1])  # type: ignore[index]
        bat, bat_at = (None, None) if battery is None else (battery[0], now - battery[1])  # type: ignore[index]
        # Inputs equal but for `measured_at` (and new objects).
        chargers = tuple(replace(ci, measured_at=now - 1.0) for ci in before.chargers)
        snap = replace(
            before, chargers=chargers, mains=mains, battery_current=bat, battery_at=bat_at, state=after.state
        )
        full = compute(snap, now)
        fast = reuse_idle(before, after, snap, now)
        if fast is None:
            # Only a reading at trip level, which `compute` must confirm, is left to it.
            assert mains is not None and max(mains.currents) > 2.0 * snap.site.mains_limit
            continue
        reused += 1
        assert fast == full


def test_reuse_declines_changed_inputs() -> None:
    cfg = ChargerConfig(id="a")
    ci = ChargerInput(cfg, "smart", 0, 32.0, "max", (0.0, 0.0, 0.0), 0.0, "not_present", 3, False, NOW, True)
    before = Snapshot(site=SiteConfig(), chargers=(ci,), mains=Reading((1.0, 1.0, 1.0), NOW))
    after = compute(before, NOW)
    before = replace(before, state=after.state)
    after = compute(before, NOW)
    assert steady_idle(before, after)
    same = replace(before, state=after.state, mains=Reading((3.0, 2.0, 1.0), NOW + 1))
    assert reuse_idle(before, after, same, NOW + 1) == compute(same, NOW + 1)
    # The car asks for current, another charger appears, the site changes, a circuit meter reports:
    # each is for `compute` to decide.
    for changed in (
        replace(same, chargers=(replace(ci, demand=2),)),
        replace(same, chargers=(ci, replace(ci, config=ChargerConfig(id="b")))),
        replace(same, site=SiteConfig(mains_limit=30.0)),
        replace(same, circuit_meters={"x": Reading((1.0, 1.0, 1.0), NOW)}),
        replace(same, state=BalancerState()),
    ):
        assert reuse_idle(before, after, changed, NOW + 1) is None
    # Drawing current, or a demand that returns by itself (a shortage pause ends), is never steady.
    assert not idle_input(replace(ci, measured=(0.0, 1.0, 0.0)))
    assert not idle_input(replace(ci, demand=2))
