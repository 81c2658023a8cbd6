"""Shelly auto_balance as a metered circuit node: the node's reading, and the one balancer keeping it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evpilot.control.autobalance import node_name, node_reading
from evpilot.core import sources
from evpilot.core.balancer import compute
from evpilot.core.charger import ChargerConfig, Phases
from evpilot.core.site import (
    BalancerState,
    ChargerInput,
    ChargerMemo,
    CircuitConfig,
    Reading,
    SiteConfig,
    Snapshot,
)

NOW = 1_000_000.0
NODE = node_name("cp1")


def allocate(
    meter: Phases | None,
    ev: Phases,
    limit: float,
    phases: int = 3,
    age_s: float = 1.0,
    before: float = 32.0,
) -> tuple[float, str]:
    """One `compute` of a charger below its auto_balance node (house load on the mains far below MAINS)."""
    cfg = ChargerConfig(id="cp1", max_current=32.0, phases=phases, circuit=NODE)
    node = CircuitConfig(NODE, limit, metered=True, fuse=200.0)
    site = SiteConfig(mains_limit=200.0, circuits=(node,), ramp_step=80.0, ev_headroom=50.0)
    charger = ChargerInput(cfg, "smart", 2, 32.0, sources.MAX, ev, charging=max(ev) > 0, measured_at=NOW - 1)
    memo = ChargerMemo(current=before, phases=phases, running_since=NOW - 1000)
    snap = Snapshot(
        site=site,
        chargers=(charger,),
        mains=Reading((0.0, 0.0, 0.0), NOW - 1),
        circuit_meters={} if meter is None else {NODE: Reading(meter, NOW - age_s)},
        state=BalancerState({"cp1": memo}),
    )
    out = compute(snap, NOW).chargers["cp1"]
    return out.current, out.source.text


@pytest.mark.parametrize(
    ("em", "ev", "used", "exclude", "expected"),
    [
        ((10.0, 11.0, 12.0), (6.0, 6.0, 6.0), (0, 1, 2), True, (10.0, 11.0, 12.0)),
        (
            (10.0, 11.0, 12.0),
            (6.0, 6.0, 6.0),
            (0, 1, 2),
            False,
            (16.0, 17.0, 18.0),
        ),  # meter sees the house only
        ((9.0,), (0.0, 6.0, 0.0), (1,), True, (0.0, 9.0, 0.0)),  # EM1: its channel on the charger's phase
        ((9.0,), (6.0, 6.0, 6.0), (0, 1, 2), True, (9.0, 9.0, 9.0)),
    ],
)
def test_node_reading(
    em: tuple[float, ...], ev: Phases, used: tuple[int, ...], exclude: bool, expected: Phases
) -> None:
    reading = node_reading(em, 5.0, ev, used, exclude)
    assert reading.currents == pytest.approx(expected) and reading.taken_at == 5.0


@pytest.mark.parametrize(
    ("meter", "ev", "limit", "phases", "amps"),
    [
        ((10.0, 10.0, 10.0), (6.0, 6.0, 6.0), 16.0, 3, 12.0),  # the house is 10 - 6 = 4 A: 12 A left
        ((10.0, 14.0, 9.0), (6.0, 6.0, 6.0), 16.0, 3, 8.0),  # the worst phase binds
        ((16.0, 2.0, 2.0), (6.0, 0.0, 0.0), 16.0, 1, 6.0),  # a 1-phase charger on L1
        ((30.0, 30.0, 30.0), (6.0, 6.0, 6.0), 16.0, 3, 0.0),  # over the limit: no current at all
        ((90.0, 90.0, 90.0), (6.0, 6.0, 6.0), 16.0, 3, 0.0),  # far over max_current, yet under the fuse
    ],
)
def test_the_node_caps_its_charger(meter: Phases, ev: Phases, limit: float, phases: int, amps: float) -> None:
    current, source = allocate(meter, ev, limit, phases)
    assert current == pytest.approx(amps, abs=0.11)
    if 0 < amps < 32:
        assert source == f"circuit:{NODE}"


def test_a_stale_or_missing_reading_falls_back_and_never_raises() -> None:
    for meter, age in (((10.0, 10.0, 10.0), 12.0), (None, 0.0)):
        current, source = allocate(meter, (10.0, 10.0, 10.0), 16.0, age_s=age, before=10.0)
        assert current <= 6.0 and source == f"stale:{NODE}"
        low, _ = allocate(meter, (0.0, 0.0, 0.0), 16.0, age_s=age, before=0.0)
        assert low == 0.0


phase_a = st.floats(-50, 100, allow_nan=False)


@given(
    meter=st.tuples(phase_a, phase_a, phase_a),
    ev=st.tuples(*[st.floats(0, 32, allow_nan=False)] * 3),
    limit=st.floats(6, 200, allow_nan=False),
    exclude=st.booleans(),
)
def test_the_node_keeps_every_phase_under_max_current(
    meter: Phases, ev: Phases, limit: float, exclude: bool
) -> None:
    reading = node_reading(meter, NOW - 1, ev, (0, 1, 2), exclude)
    current, _ = allocate(reading.currents, ev, limit)
    for p in range(3):
        # What the meter would read with the new current; an export behind the meter leaves more room.
        others = meter[p] - ev[p] if exclude else meter[p]
        if current > 0:
            assert others + current <= limit + 0.11
