"""The SmartEVSE firmware's vocabulary, shared by its REST facade and its MQTT topics.

One place for the firmware's state and error names, its units (currents in dA, the home battery
current included, on both transports), the solar stop timer, the load-balancing role and what a
mode change does to the override: REST (`smartevse/rest.py`) and MQTT (`smartevse/mqtt.py`) render
and take the same values through these functions only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from evpilot.control.runtime import Runtime
from evpilot.control.views import ChargerView, SiteView
from evpilot.core import commands as cmd
from evpilot.core.charger import ErrorFlag
from evpilot.core.sources import SourceKind

# The firmware's web state names (`StrStateNameWeb`) and State numbers, by IEC 61851 pilot state.
# B1 and C1 are the firmware's STATE_B1 / STATE_C1; D1 (ventilation, no PWM) is asked to stop like C1,
# D2 is the firmware's state D, named "D".
STATE: dict[str, tuple[int, str]] = {
    "A": (0, "Ready to Charge"),
    "B1": (9, "Charging Stopped"),
    "B2": (1, "Connected to EV"),
    "C1": (10, "Stop Charging"),
    "C2": (2, "Charging"),
    "D1": (10, "Stop Charging"),
    "D2": (3, "D"),
    "E": (0, "Ready to Charge"),
    "F": (0, "Ready to Charge"),
}
# The firmware's error names and `getErrorId` numbers (highest bit set + 1); evpilot-only faults after them.
ERRORS: dict[ErrorFlag, tuple[str, int]] = {
    ErrorFlag.TEMPERATURE_HIGH: ("Temperature High", 3),
    ErrorFlag.RCM_TRIGGERED: ("RCM Tripped", 5),
    ErrorFlag.PILOT_FAULT: ("Pilot Fault", 10),
    ErrorFlag.DIODE_SHORT: ("Diode Short", 11),
    ErrorFlag.EV_NOT_STOPPING: ("EV Not Stopping", 12),
}
NO_ERROR = ("None", 0)
NO_POWER = ("No Power Available", 1)
# CT_NOCOMM: the mains data went stale and the site runs on its fallback currents.
COMM_ERROR = ("Communication Error", 2)
WAITING_FOR_SOLAR = "Waiting for Solar"
# Why a charger that may charge gets no current, as the firmware says it: by the kind of source that
# bound it. The solar budget (whatever fed it) is the firmware's NO_SUN, shown in the state text; a
# stale meter's fallback is CT_NOCOMM; every fuse, cap or shortage is LESS_6A (no power available).
NO_SUN = "no_sun"
SOURCE_CODE: dict[SourceKind, tuple[str, int] | str] = {
    SourceKind.SOLAR: NO_SUN,
    SourceKind.IMPORT: NO_SUN,
    SourceKind.BATTERY: NO_SUN,
    SourceKind.STALE: COMM_ERROR,
    SourceKind.FALLBACK: COMM_ERROR,
}
# The firmware takes at most eight modules on one mains (one master, nodes 2 to 8).
MAX_LOADBL = 8
# enable_C2 / EnableC2 by number: the firmware's names and evpilot's phase modes.
ENABLE_C2 = ("Not present", "Always Off", "Solar Off", "Always On", "Auto")
C2_PHASE_MODES = ("not_present", "always_1p", "solar_1p", "always_3p", "auto")
C2_NAME = dict(zip(C2_PHASE_MODES, ENABLE_C2, strict=True))


class Mode(enum.Enum):
    """The firmware's mode, as `Set/Mode` names it and `/settings` numbers it."""

    OFF = ("Off", 0)
    NORMAL = ("Normal", 1)
    SOLAR = ("Solar", 2)
    SMART = ("Smart", 3)

    @property
    def mqtt_name(self) -> str:
        """The MQTT `Mode` payload."""
        return self.value[0]

    @property
    def mode_id(self) -> int:
        """The `/settings` mode parameter and `mode_id`."""
        return self.value[1]

    @property
    def core_mode(self) -> str | None:
        """evpilot's charger mode (None: OFF disables charging and keeps the mode)."""
        return None if self is Mode.OFF else self.name.lower()


MODE_BY_ID = {m.mode_id: m for m in Mode}
MODE_BY_NAME = {m.mqtt_name: m for m in Mode}


def mode_of(v: ChargerView) -> Mode:
    """The firmware mode a charger shows: OFF while disabled or off; evpilot's min+solar is SOLAR."""
    if not v.enabled or v.mode == "off":
        return Mode.OFF
    return {"normal": Mode.NORMAL, "smart": Mode.SMART}.get(v.mode, Mode.SOLAR)


def mode_commands(cid: str, mode: Mode) -> list[cmd.Command]:
    """`Set/Mode` and `/settings?mode=`: OFF disables; SMART and SOLAR clear the override (firmware)."""
    core = mode.core_mode
    if core is None:
        return [cmd.SetEnabled(cid, False)]
    commands: list[cmd.Command] = [cmd.SetMode(cid, core)]
    if mode is not Mode.NORMAL:
        commands.append(cmd.SetOverride(cid, None))
    commands.append(cmd.SetEnabled(cid, True))
    return commands


@dataclass(frozen=True, slots=True)
class Status:
    """The firmware's state and error of one charger: one truth for `/settings` and the MQTT topics."""

    state_id: int
    state: str
    error: str
    error_id: int


def status(v: ChargerView, site: SiteView) -> Status:
    """State and error as the firmware's `/settings` shows them (waiting for sun is in the state)."""
    state_id, state = STATE[v.pilot.value]
    error = NO_ERROR
    if v.errors:
        flagged = [ERRORS[f] for f in ERRORS if f in v.errors]
        if flagged:
            # Like the firmware's getErrorId: the highest error number wins.
            error = max(flagged, key=lambda e: e[1])
    if error is NO_ERROR:
        if site.fallback:
            error = COMM_ERROR
        elif v.plugged and v.permitted and v.commanded == 0:
            code = SOURCE_CODE.get(v.limit_source.kind, NO_POWER)
            if isinstance(code, str):
                # The firmware's /settings moves NO_SUN from the error into the state text.
                state = f"{state} - {WAITING_FOR_SOLAR}"
            else:
                error = code
    return Status(state_id, state, error[0], error[1])


def solar_stop_timer(v: ChargerView, site: SiteView, now: float) -> int:
    """Seconds until solar charging stops for lack of sun (0 = not counting)."""
    stop_s = site.config.solar.stop_min * 60.0
    if v.solar_short_since is None or stop_s <= 0:
        return 0
    return max(0, round(stop_s - (now - v.solar_short_since)))


def loadbl_roles(ids: Sequence[str]) -> dict[str, int]:
    """LoadBl per charger: 0 alone on the site, else 1 for the first (master) and 2-8 for the others."""
    if len(ids) < 2:
        return dict.fromkeys(ids, 0)
    return {cid: min(i + 1, MAX_LOADBL) for i, cid in enumerate(ids)}


def loadbl(rt: Runtime, cid: str) -> int:
    """Charger `cid`'s LoadBl (see loadbl_roles)."""
    return loadbl_roles(list(rt.engine.chargers))[cid]


def deciamps(amps: float | None) -> int:
    """A current in A as the firmware's dA."""
    return round((amps or 0.0) * 10.0)


# Home battery current: dA on `/currents?battery_current=` and `Set/HomeBatteryCurrent` alike
# (the firmware stores both in one dA variable); + charging, − discharging.
MAX_BATTERY_DA = 10_000


def battery_amps(da: int) -> float:
    """The home battery current in A from the firmware's dA (range-checked by the caller)."""
    return da / 10.0
