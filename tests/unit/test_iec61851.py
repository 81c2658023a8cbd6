"""IEC 61851-1 control pilot: states, duty cycle <-> current, quantization, contactor rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evpilot.core.iec61851 import (
    MAX_CURRENT,
    MIN_CURRENT,
    NO_PWM_DUTY,
    STATE_MEANING,
    PilotState,
    contactor_may_close,
    current_for_duty,
    duty_for_current,
    is_plugged,
    pilot_state,
    quantize_current,
)

ALL_STATES = list(PilotState)

# Every signalable current in 0.1 A steps, as tenths of an ampere.
TENTHS = st.integers(min_value=60, max_value=800)


def test_nine_states_each_with_a_meaning() -> None:
    assert [s.value for s in ALL_STATES] == ["A", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F"]
    assert set(STATE_MEANING) == set(ALL_STATES)
    assert all(STATE_MEANING[s] for s in ALL_STATES)


@pytest.mark.parametrize(
    ("letter", "pwm", "state"),
    [
        ("A", False, PilotState.A),
        ("A", True, PilotState.A),
        ("B", False, PilotState.B1),
        ("B", True, PilotState.B2),
        ("C", False, PilotState.C1),
        ("C", True, PilotState.C2),
        ("D", False, PilotState.D1),
        ("D", True, PilotState.D2),
        ("E", False, PilotState.E),
        ("E", True, PilotState.E),
        ("F", False, PilotState.F),
        ("F", True, PilotState.F),
    ],
)
def test_pilot_state_combines_letter_and_pwm(letter: str, pwm: bool, state: PilotState) -> None:
    assert pilot_state(letter, pwm) is state


@pytest.mark.parametrize("letter", ["", "G", "b", "C2", "x"])
def test_unknown_letter_is_refused(letter: str) -> None:
    with pytest.raises(ValueError, match="unknown pilot letter"):
        pilot_state(letter, True)


@pytest.mark.parametrize("state", ALL_STATES)
def test_contactor_only_in_c2_and_d2(state: PilotState) -> None:
    assert contactor_may_close(state) is (state in (PilotState.C2, PilotState.D2))


@pytest.mark.parametrize("state", ALL_STATES)
def test_plugged_in_b_c_d_only(state: PilotState) -> None:
    assert is_plugged(state) is (state.value[0] in "BCD")


# ---- duty <-> current ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amps", "duty"),
    [
        (6.0, 10.0),
        (6.1, 10.1667),
        (10.0, 16.6667),
        (16.0, 26.6667),
        (32.0, 53.3333),
        (50.9, 84.8333),
        (51.0, 85.0),
        (52.6, 85.04),
        (63.0, 89.2),
        (79.9, 95.96),
        (80.0, 96.0),
    ],
)
def test_duty_for_current_in_both_ranges(amps: float, duty: float) -> None:
    assert duty_for_current(amps) == pytest.approx(duty, abs=1e-4)


def test_low_range_formula_is_i_over_0_6() -> None:
    for tenths in range(60, 511):
        amps = tenths / 10
        assert duty_for_current(amps) == pytest.approx(amps / 0.6, abs=1e-4)


def test_high_range_formula_is_i_over_2_5_plus_64() -> None:
    for tenths in range(526, 801):
        amps = tenths / 10
        assert duty_for_current(amps) == pytest.approx(amps / 2.5 + 64.0, abs=1e-4)


def test_zero_amps_means_no_pwm() -> None:
    assert duty_for_current(0) == NO_PWM_DUTY == 100.0
    assert current_for_duty(NO_PWM_DUTY) == 0.0


@pytest.mark.parametrize("amps", [0.1, 3.0, 5.9, 5.99, 80.1, 100.0, -6.0])
def test_nothing_between_0_and_6_nor_above_80_can_be_signaled(amps: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        duty_for_current(amps)


@pytest.mark.parametrize("amps", [51.1, 51.5, 52.0, 52.4, 52.5])
def test_gap_between_the_ranges_signals_51_a(amps: float) -> None:
    # 85 % means 51 A (low range); 52.5 A by the high-range formula is also 85 %, and the next
    # step up (85.04 %) means 52.6 A: a current in between cannot be signaled, so the pilot
    # offers the 51 A below it, never more.
    duty = duty_for_current(amps)
    assert duty == pytest.approx(85.0)
    assert current_for_duty(duty) == 51.0


@pytest.mark.parametrize(
    ("duty", "amps"),
    [
        (0.0, 0.0),
        (5.0, 0.0),
        (7.9, 0.0),
        (8.0, 6.0),
        (9.9, 6.0),
        (10.0, 6.0),
        (50.0, 30.0),
        (85.0, 51.0),
        (86.0, 55.0),
        (90.0, 65.0),
        (96.0, 80.0),
        (96.5, 80.0),
        (97.0, 80.0),
        (97.1, 0.0),
        (100.0, 0.0),
    ],
)
def test_current_for_duty(duty: float, amps: float) -> None:
    assert current_for_duty(duty) == amps


@given(TENTHS)
def test_round_trip_is_exact_outside_the_gap(tenths: int) -> None:
    amps = tenths / 10
    back = current_for_duty(duty_for_current(amps))
    if 51.0 < amps <= 52.5:
        assert back == 51.0
    else:
        assert back == amps


@given(st.floats(min_value=0, max_value=96, allow_nan=False))
def test_current_for_duty_is_monotonic(duty: float) -> None:
    assert current_for_duty(duty) <= current_for_duty(min(97.0, duty + 0.5))


# ---- quantization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amps", "out"),
    [
        (0.0, 0.0),
        (-3.0, 0.0),
        (5.99, 0.0),
        (6.0, 6.0),
        (6.05, 6.0),
        (6.09999, 6.0),
        (6.1, 6.1),
        (16.27, 16.2),
        (51.0, 51.0),
        (51.1, 51.0),
        (52.49, 51.0),
        (52.5, 51.0),
        (52.6, 52.6),
        (79.99, 79.9),
        (80.0, 80.0),
        (120.0, 80.0),
    ],
)
def test_quantize_rounds_down_to_a_signalable_current(amps: float, out: float) -> None:
    assert quantize_current(amps) == out


@given(st.floats(min_value=-100, max_value=200, allow_nan=False))
def test_quantized_current_is_signalable_and_never_above_its_input(amps: float) -> None:
    q = quantize_current(amps)
    assert q <= max(0.0, amps) + 1e-9
    assert q == 0.0 or MIN_CURRENT <= q <= MAX_CURRENT
    assert abs(q * 10 - round(q * 10)) < 1e-9
    # What is signaled is exactly what the EV reads back from the duty cycle.
    assert current_for_duty(duty_for_current(q)) == q
