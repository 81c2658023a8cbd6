"""The speed-ups inside `compute` give exactly what the plain computations give.

- `fill` with a `FillCache` (every member of a binding constraint frozen through a per-constraint
  aggregate) against `fill` without one: equal allocations, sources and used capacity, bit for bit;
- the keep order sorted one key part at a time against the tuple sort;
- a memo filled slot by slot against the dataclass constructor.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

from hypothesis import given
from hypothesis import strategies as st

from evpilot.core import balancer, sources
from evpilot.core.charger import ChargerConfig
from evpilot.core.fill import FillCache, Problem, fill
from evpilot.core.site import (
    BalancerState,
    ChargerInput,
    ChargerMemo,
    CircuitConfig,
    Reading,
    SiteConfig,
    Snapshot,
)

coefs = st.sampled_from([1.0, 1.0, 1.0, 3.0, 2.0, 0.5])


@st.composite
def problems(draw: st.DrawFn) -> tuple[Problem, list[int], list[float], list[float] | None]:
    """Random chargers on random constraints (a tree-like mix: shared mains, groups, odd coefficients)."""
    ncons = draw(st.integers(1, 8))
    nch = draw(st.integers(2, 14))
    p = Problem()
    for c in range(ncons):
        cap = draw(st.one_of(st.floats(-5, 120, allow_nan=False), st.sampled_from([0.0, 16.0, 25.0, 63.0])))
        p.add_constraint(cap, f"c{c}")
        p.used[c] = draw(st.sampled_from([0.0, 0.0, 1.5, 7.0]))
    for i in range(nch):
        p.add_charger()
        for c in sorted(draw(st.sets(st.integers(0, ncons - 1), max_size=ncons))):
            p.link(i, c, draw(coefs))
    members = sorted(draw(st.sets(st.integers(0, nch - 1), min_size=2)))
    caps = [
        draw(st.one_of(st.floats(0, 40, allow_nan=False), st.sampled_from([6.0, 10.0, math.inf])))
        for _ in range(nch)
    ]
    weights = None
    if draw(st.booleans()):
        weights = [0.0] * ncons
        for i in members:
            for c, k in p.uses[i]:
                weights[c] += k
    return p, members, caps, weights


def _copy(p: Problem, cache: FillCache | None) -> Problem:
    return Problem(list(p.capacity), list(p.used), list(p.source), p.members, p.uses, cache)


@given(problems(), st.integers(1, 3))
def test_fill_aggregate_matches_per_charger(
    case: tuple[Problem, list[int], list[float], list[float] | None], rounds: int
) -> None:
    p, members, caps, weights = case
    sources = [f"cap{i}" for i in range(len(caps))]
    cache = FillCache(len(p.capacity))
    # The cache is reused across fills (as across ticks): every round must still match.
    for _ in range(rounds):
        fast, slow = _copy(p, cache), _copy(p, None)
        a_fast, b_fast = [-1.0] * len(caps), [""] * len(caps)
        a_slow, b_slow = [-1.0] * len(caps), [""] * len(caps)
        fill(fast, members, caps, sources, a_fast, b_fast, None if weights is None else list(weights))
        fill(slow, members, caps, sources, a_slow, b_slow, None if weights is None else list(weights))
        assert a_fast == a_slow
        assert b_fast == b_slow
        assert fast.used == slow.used


def _charger(i: int, prio: int, kwh: float, phases: int) -> ChargerInput:
    cfg = ChargerConfig(id=f"cp{i % 7}-{i}", priority=prio, phases=phases)
    return ChargerInput(
        config=cfg,
        mode="smart",
        demand=2,
        limit=16.0,
        limit_source=sources.MAX,
        measured=(0.0, 0.0, 0.0),
        session_kwh=kwh,
    )


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from([0.0, 0.0, 1.0, 2.5, 7.0, -0.0]),
            st.sampled_from([1, 3]),
            st.sampled_from([0.0, 16.0]),
            st.sampled_from([-1e18, 990.0, 1000.0]),
            st.sampled_from([-1e18, 500.0, 990.0]),
        ),
        min_size=1,
        max_size=25,
    ),
    st.data(),
)
def test_keep_order_matches_tuple_sort(
    rows: list[tuple[int, float, int, float, float, float]], data: st.DataObject
) -> None:
    chargers = tuple(_charger(i, prio, kwh, ph) for i, (prio, kwh, ph, _c, _r, _s) in enumerate(rows))
    memos = [ChargerMemo(current=c, running_since=r, stopped_at=s) for (_p, _k, _ph, c, r, s) in rows]
    eff = [ph for (_p, _k, ph, _c, _r, _s) in rows]
    candidates = sorted(data.draw(st.sets(st.integers(0, len(rows) - 1), min_size=1)))
    now, min_run_s = 1000.0, 300.0
    layout = balancer._Layout([ci.config for ci in chargers])
    expected = sorted(
        candidates,
        key=lambda i: (
            chargers[i].config.priority,
            (memos[i].current > 0 and now - memos[i].running_since < min_run_s)
            or (memos[i].current <= 0 and now - memos[i].stopped_at >= min_run_s),
            -chargers[i].session_kwh / eff[i],
            chargers[i].config.id,
        ),
        reverse=True,
    )
    assert balancer._keep_order(chargers, candidates, memos, eff, now, min_run_s, layout) == expected


def test_memo_by_slots_equals_constructor() -> None:
    values = tuple(
        {float: 1.5, int: 2, bool: True}.get(type(getattr(ChargerMemo(), f.name)), 4.0)
        for f in fields(ChargerMemo)
    )
    built = balancer._memo(*values)
    assert built == ChargerMemo(*values)
    assert hash(built) == hash(ChargerMemo(*values))


def _cold() -> None:
    """Forget everything `compute` keeps between calls."""
    for cache in (
        balancer._PAUSED_MEMOS,
        balancer._ALLOCS_BY_VALUE,
        balancer._ALLOCS,
        balancer._SHAPES,
        balancer._LAYOUTS,
        balancer._INFO,
        balancer._SITES,
    ):
        cache.clear()


def test_kept_data_changes_no_decision_in_a_shortage() -> None:
    """A shortage site ticked through three pauses: warm caches and cold ones (without the shortcuts)
    decide the same."""
    circuits = (CircuitConfig("hall", 63.0), CircuitConfig("row", 32.0, "hall"))
    site = SiteConfig(mains_limit=40.0, circuits=circuits, mode="smart", exclude_self_current=True)
    chargers = []
    for i in range(40):
        cfg = ChargerConfig(
            id=f"cp{i:02d}",
            phases=1 if i % 3 == 0 else 3,
            phase=i % 3 + 1 if i % 3 == 0 else 1,
            circuit="row" if i % 2 else "hall",
            priority=1 if i % 10 == 0 else 0,
        )
        chargers.append(
            ChargerInput(
                config=cfg,
                mode="smart",
                demand=2,
                limit=16.0,
                limit_source=sources.MAX,
                measured=(0.0, 0.0, 0.0),
            )
        )
    warm_state = cold_state = BalancerState()
    inputs = chargers
    for k in range(140):
        now = 1000.0 + k
        draw = [0.0, 0.0, 0.0]
        for ci in inputs:
            for p, a in enumerate(ci.config.phase_map.to_mains(ci.measured)):
                draw[p] += a
        mains = Reading((5.0 + draw[0], 3.0 + draw[1], 4.0 + draw[2]), now)
        warm = balancer.compute(
            Snapshot(site=site, chargers=tuple(inputs), mains=mains, state=warm_state), now
        )
        _cold()
        balancer.FAST_PATHS = False
        try:
            cold = balancer.compute(
                Snapshot(site=site, chargers=tuple(inputs), mains=mains, state=cold_state), now
            )
        finally:
            balancer.FAST_PATHS = True
        assert warm.chargers == cold.chargers, k
        assert warm.state == cold.state, k
        warm_state, cold_state = warm.state, cold.state
        inputs = [
            replace(
                ci,
                measured=(a, a, a) if ci.config.phases == 3 else (a, 0.0, 0.0),
                charging=a > 0.5,
                session_kwh=ci.session_kwh + a / 3600.0,
            )
            for ci in inputs
            for a in (warm.chargers[ci.config.id].current,)
        ]
    # The run went through pauses (and chargers paused again after one).
    assert any(a.source is sources.SHORTAGE for a in warm.chargers.values())
