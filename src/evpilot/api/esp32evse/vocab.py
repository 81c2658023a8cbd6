"""The ESP32-EVSE firmware's vocabulary, shared by its REST facade and its MQTT bridge topics.

Units at this edge: energy in Ws (core kWh × 3,600,000), time limits in s (core minutes × 60),
currents in A with 0.1 A resolution (rounded, halves up, on both transports), power in W.
"""

from __future__ import annotations

import math

from evpilot.control.views import ChargerView

WS_PER_KWH = 3_600_000.0
# Pilot states in which the firmware says it is charging.
CHARGING_STATES = frozenset({"C2", "D2"})


def tenths(amps: float) -> float:
    """The charging current as the firmware keeps it: rounded to 0.1 A, halves up (REST and MQTT alike)."""
    if abs(amps) > 1e6:  # far out of range either way; floor() of a huge float would overflow
        return amps
    return math.floor(amps * 10.0 + 0.5 + 1e-9) / 10.0


def charging_current(user_limit: float | None, max_current: float) -> float:
    """`chargingCurrent` / `current`: the user's limit, else the charger's MAX."""
    return user_limit if user_limit is not None else max_current


def shown_state(ch: ChargerView) -> str:
    """The pilot state the firmware shows: an EVSE taken out of service shows F."""
    return ch.pilot.value if ch.available else "F"
