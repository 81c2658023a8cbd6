"""IEC 61851-1 control pilot: states, PWM duty cycle and current conversion."""

from __future__ import annotations

import math
from enum import StrEnum

MIN_CURRENT = 6.0
MAX_CURRENT = 80.0
# Above 51 A the standard switches to the second duty-cycle range (85 %–96 %).
RANGE_SPLIT_CURRENT = 51.0
# 85 % is 51 A, and the high-range formula gives 85 % again for 52.5 A; the next step up (52.6 A)
# is the first current above 51 A an EV can read back, so 51-52.5 A is signaled as 51 A.
RANGE_GAP_TOP = 52.5
# Time the EV is given to stop drawing after PWM is removed before the contactor must open.
STOP_DEADLINE_S = 6.0
# Above this many amps on any phase an EV counts as still drawing current.
DRAW_THRESHOLD_A = 0.5
NO_PWM_DUTY = 100.0


class PilotState(StrEnum):
    """Control pilot states; the digit says whether PWM is on (2) or off (1)."""

    A = "A"
    B1 = "B1"
    B2 = "B2"
    C1 = "C1"
    C2 = "C2"
    D1 = "D1"
    D2 = "D2"
    E = "E"
    F = "F"


STATE_MEANING: dict[PilotState, str] = {
    PilotState.A: "no vehicle connected",
    PilotState.B1: "vehicle connected, EVSE not offering current (no PWM)",
    PilotState.B2: "vehicle connected, EVSE offering current (PWM on), vehicle not requesting",
    PilotState.C1: "vehicle requests charging, EVSE not offering current (no PWM)",
    PilotState.C2: "vehicle charging, PWM on",
    PilotState.D1: "vehicle requests charging with ventilation, no PWM",
    PilotState.D2: "vehicle charging with ventilation, PWM on",
    PilotState.E: "control pilot short circuit or no power",
    PilotState.F: "EVSE fault (pilot at -12 V)",
}


def quantize_current(amps: float) -> float:
    """Round down to the 0.1 A resolution; anything between 0 and 6 A becomes 0."""
    # Rounding down: a signaled current must never exceed the limit it was derived from.
    value = math.floor(amps * 10.0 + 1e-6) / 10.0
    if value < MIN_CURRENT:
        return 0.0
    if RANGE_SPLIT_CURRENT < value <= RANGE_GAP_TOP:
        return RANGE_SPLIT_CURRENT
    return min(value, MAX_CURRENT)


def duty_for_current(amps: float) -> float:
    """Duty cycle (%) that signals `amps`; 0 A means no PWM (100 %, state x1)."""
    if amps == 0:
        return NO_PWM_DUTY
    if not MIN_CURRENT <= amps <= MAX_CURRENT:
        raise ValueError(f"current {amps} A is outside 0 or {MIN_CURRENT}-{MAX_CURRENT} A")
    amps = round(amps * 10.0) / 10.0
    if amps <= RANGE_GAP_TOP:
        return round(min(amps, RANGE_SPLIT_CURRENT) / 0.6, 4)
    return round(amps / 2.5 + 64.0, 4)


def current_for_duty(duty: float) -> float:
    """Current (A) an EV may draw for a PWM duty cycle (%); 0 where charging is not allowed."""
    if duty < 8.0 or duty > 97.0:
        return 0.0
    if duty < 10.0:
        return MIN_CURRENT
    if duty <= 85.0:
        amps = duty * 0.6
    elif duty <= 96.0:
        amps = (duty - 64.0) * 2.5
    else:
        amps = MAX_CURRENT
    return round(amps * 10.0) / 10.0


# pilot_state runs for every charger on every tick: look the state up instead of building it.
_STATES_PWM_ON = {letter: PilotState(letter + "2") for letter in "BCD"}
_STATES_PWM_OFF = {letter: PilotState(letter + "1") for letter in "BCD"}
for _letter in "AEF":
    _STATES_PWM_ON[_letter] = _STATES_PWM_OFF[_letter] = PilotState(_letter)


def pilot_state(ev_letter: str, pwm_on: bool) -> PilotState:
    """Combine what the EV presents (A–F) with whether PWM is on."""
    state = (_STATES_PWM_ON if pwm_on else _STATES_PWM_OFF).get(ev_letter)
    if state is None:
        raise ValueError(f"unknown pilot letter {ev_letter!r}")
    return state


_CONTACTOR_STATES = frozenset({PilotState.C2, PilotState.D2})
_UNPLUGGED_STATES = frozenset({PilotState.A, PilotState.E, PilotState.F})


def contactor_may_close(state: PilotState) -> bool:
    """The contactor may be closed only while the EV requests and PWM is on."""
    return state in _CONTACTOR_STATES


def is_plugged(state: PilotState) -> bool:
    """A vehicle is connected (any state but A, E and F)."""
    return state not in _UNPLUGGED_STATES
