"""The one-charger shortcut of `fill` gives exactly what the general heap algorithm gives."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from evpilot.core.fill import Problem, fill

capacities = st.lists(
    st.one_of(st.floats(-10, 80, allow_nan=False), st.sampled_from([0.0, 10.0, 25.0])), max_size=6
)
coefs = st.sampled_from([1.0, 3.0, 0.5, 1e-12])
caps_st = st.one_of(st.floats(0, 80, allow_nan=False), st.sampled_from([6.0, 16.0, math.inf]))


def build(capacity: list[float], links: list[tuple[int, float]], used: list[float]) -> Problem:
    """A problem with one charger (index 0) linked as given, plus an inert second charger."""
    p = Problem()
    for k, cap in enumerate(capacity):
        p.add_constraint(cap, f"c{k}")
        p.used[k] = used[k % len(used)] if used else 0.0
    p.add_charger()
    p.add_charger()
    for c, coef in links:
        if capacity:
            p.link(0, c % len(capacity), coef)
    return p


@given(
    capacity=capacities,
    links=st.lists(st.tuples(st.integers(0, 5), coefs), max_size=5),
    used=st.lists(st.floats(0, 10, allow_nan=False), max_size=3),
    cap=caps_st,
)
def test_single_member_matches_general_path(
    capacity: list[float], links: list[tuple[int, float]], used: list[float], cap: float
) -> None:
    caps = [cap, math.inf]
    sources = ["own", "inert"]
    fast = build(capacity, links, used)
    alloc_fast, bound_fast = [-1.0, -1.0], ["", ""]
    fill(fast, [0], caps, sources, alloc_fast, bound_fast)
    # The inert charger has no constraints and an infinite cap: it is frozen last and changes
    # nothing for charger 0, but makes `fill` take the general path.
    slow = build(capacity, links, used)
    alloc_slow, bound_slow = [-1.0, -1.0], ["", ""]
    fill(slow, [0, 1], caps, sources, alloc_slow, bound_slow)
    assert alloc_fast[0] == alloc_slow[0]
    assert bound_fast[0] == bound_slow[0]
    assert fast.used == slow.used
