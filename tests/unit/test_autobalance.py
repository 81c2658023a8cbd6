"""The pure auto_balance cap (Shelly Top AC `auto_balance`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evpilot.core.autobalance import BalanceInput, auto_balance_cap


def _inp(**kw: object) -> BalanceInput:
    base: dict[str, object] = {
        "meter": (10.0, 10.0, 10.0),
        "meter_age_s": 1.0,
        "ev": (6.0, 6.0, 6.0),
        "max_current": 16.0,
        "exclude_self_current": True,
        "ev_phases": (0, 1, 2),
        "timeout_s": 11.0,
        "fallback": 6.0,
    }
    base.update(kw)
    return BalanceInput(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "amps", "reason"),
    [
        ({}, 12.0, "ok"),  # house = 10 - 6 = 4 A, so 12 A are left
        ({"exclude_self_current": False}, 6.0, "ok"),  # the meter sees only the house
        ({"meter": (10.0, 14.0, 9.0)}, 8.0, "ok"),  # the worst phase binds
        ({"meter": (10.0, 14.0, 9.0), "ev_phases": (0,), "ev": (6.0, 0.0, 0.0)}, 12.0, "ok"),
        ({"meter": (30.0, 30.0, 30.0)}, 0.0, "ok"),  # over the limit: no current at all
        ({"meter": (-20.0, -20.0, -20.0), "ev": (0.0, 0.0, 0.0)}, 16.0, "ok"),  # export counts as 0
        ({"meter": (9.0,), "ev_phases": (0,), "ev": (6.0, 0.0, 0.0)}, 13.0, "ok"),  # EM1: one channel
        ({"meter_age_s": 12.0}, 6.0, "stale"),
        ({"meter": None}, 6.0, "no_reading"),
        ({"meter": ()}, 6.0, "no_reading"),
    ],
)
def test_cap_table(kw: dict[str, object], amps: float, reason: str) -> None:
    result = auto_balance_cap(_inp(**kw))
    assert result.amps == pytest.approx(amps)
    assert result.reason == reason


phase_a = st.floats(-50, 100, allow_nan=False)


@given(
    meter=st.tuples(phase_a, phase_a, phase_a),
    ev=st.tuples(*[st.floats(0, 32, allow_nan=False)] * 3),
    limit=st.floats(6, 200, allow_nan=False),
    exclude=st.booleans(),
)
def test_cap_keeps_every_phase_under_the_limit(
    meter: tuple[float, float, float], ev: tuple[float, float, float], limit: float, exclude: bool
) -> None:
    result = auto_balance_cap(_inp(meter=meter, ev=ev, max_current=limit, exclude_self_current=exclude))
    assert result.amps >= 0
    for p in range(3):
        others = max(0.0, meter[p] - ev[p] if exclude else meter[p])
        if result.amps > 0:
            assert others + result.amps <= limit + 1e-9
    more = tuple(m + 1.0 for m in meter)
    assert auto_balance_cap(
        _inp(meter=more, ev=ev, max_current=limit, exclude_self_current=exclude)
    ).amps <= (result.amps)
