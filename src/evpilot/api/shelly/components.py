"""The Top AC's virtual components and one charger as a Shelly device (identity, values, tracking)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evpilot import __version__
from evpilot.api.shelly.rpc import NOT_FOUND, RpcError, int_arg, invalid, num
from evpilot.control.views import ChargerView
from evpilot.core.charger import WorkState
from evpilot.core.iec61851 import MIN_CURRENT

MODEL = "EVE01"
APP = "TopAC"
GEN = 2
# Firmware ids start with the build date; clients such as aioshelly gate features (virtual components
# need 20240213 or later) on it.
FW_ID = f"20251028-120000/{__version__}-evpilot"
OWNER = "service:0"
WORK_STATE_TITLES = {
    WorkState.FREE.value: "Free",
    WorkState.INSERT.value: "Connected",
    WorkState.WAIT.value: "Waiting",
    WorkState.CHARGING.value: "Charging",
    WorkState.PAUSE.value: "Paused",
    WorkState.END.value: "Complete",
    WorkState.FAULT.value: "Fault",
}


@dataclass(frozen=True, slots=True)
class Component:
    """A virtual component of the Top AC, owned by `service:0`."""

    type: str
    id: int
    role: str
    name: str
    writable: bool

    @property
    def key(self) -> str:
        """The component key (`number:200`)."""
        return f"{self.type}:{self.id}"


# The Top AC's virtual components (Shelly numbers dynamic components from 200).
COMPONENTS = (
    Component("enum", 200, "work_state", "Work state", False),
    Component("number", 200, "current_limit", "Current limit", True),
    Component("object", 200, "phase_info", "Phase info", False),
    Component("boolean", 200, "start_charging", "Start charging", True),
    Component("number", 201, "energy_charge", "Session energy", False),
    Component("number", 202, "time_charge", "Session duration", False),
)
TYPES = {"Enum": "enum", "Number": "number", "Boolean": "boolean", "Object": "object"}


def resolve(ctype: str, params: Mapping[str, Any]) -> Component:
    """The component a call addresses: by `id`, or by `owner` + `role` (as the Top AC's docs do)."""
    if "id" in params:
        cid = int_arg(params, "id")
        for c in COMPONENTS:
            if c.type == ctype and c.id == cid:
                if "role" in params and params["role"] != c.role:
                    raise invalid(f"Argument 'role' does not match {c.key}")
                return c
        raise RpcError(NOT_FOUND, f"Argument 'id', value {cid} not found!")
    if "owner" not in params and "role" not in params:
        raise invalid("Argument 'id' is missing")
    owner, role = params.get("owner"), params.get("role")
    if not isinstance(owner, str) or not isinstance(role, str):
        raise invalid("Arguments 'owner' and 'role' must be strings")
    if owner != OWNER:
        raise RpcError(NOT_FOUND, f"Argument 'owner', value {owner!r} not found!")
    for c in COMPONENTS:
        if c.type == ctype and c.role == role:
            return c
    raise RpcError(NOT_FOUND, f"Argument 'role', value {role!r} not found!")


# ---- per-charger device view ----------------------------------------------------------------------


@dataclass(slots=True)
class Track:
    value: Any = None
    source: str = ""
    ts: int = 0
    seen: bool = False


def mac_for(cid: str) -> str:
    # Locally administered (0x02 prefix), stable per charger id.
    return "02" + hashlib.sha256(cid.encode()).hexdigest()[:10].upper()


@dataclass(slots=True)
class Device:
    """One charger as a Shelly device: identity, value tracking and config revision."""

    cid: str
    device_id: str
    mac: str
    tracks: dict[str, Track] = field(default_factory=dict)
    minutes: list[tuple[int, float]] = field(default_factory=list)
    cfg_rev: int = 0

    def energy_counter(self, now: float, total_kwh: float) -> dict[str, Any]:
        """Shelly's energy counter: total (Wh), by_minute (mWh of the last 3 whole minutes), minute_ts."""
        minute = int(now // 60) * 60
        if not self.minutes or self.minutes[-1][0] != minute:
            self.minutes.append((minute, total_kwh))
            del self.minutes[:-5]

        def at(ts: int) -> float | None:
            best = None
            for m, kwh in self.minutes:
                if m <= ts:
                    best = kwh
            return best

        by_minute = []
        for i in range(3):
            end, start = at(minute - 60 * i), at(minute - 60 * (i + 1))
            by_minute.append(0 if end is None or start is None else round((end - start) * 1e6, 3))
        return {"total": num(round(total_kwh * 1000.0, 3)), "minute_ts": minute, "by_minute": by_minute}


def phase_info(dev: Device, ch: ChargerView, now: float) -> dict[str, Any]:
    currents = ch.currents
    volts = ch.voltages
    if ch.config.phases == 1:
        # A 1-phase charger's meter channel is phase A of the Top AC's report.
        currents = (currents[0], 0.0, 0.0)
    powers = [i * v for i, v in zip(currents, volts, strict=True)]
    value: dict[str, Any] = {
        "counter": dev.energy_counter(now, ch.lifetime_kwh),
        "total_current": num(round(sum(currents), 2)),
        "total_power": num(round(sum(powers), 1)),
        "total_act_energy": num(round(ch.lifetime_kwh, 3)),
    }
    for name, i, v, p in zip(("phase_a", "phase_b", "phase_c"), currents, volts, powers, strict=True):
        value[name] = {"voltage": num(round(v, 1)), "current": num(round(i, 2)), "power": num(round(p, 1))}
    return value


def component_values(dev: Device, ch: ChargerView, now: float) -> dict[str, Any]:
    s = ch.session
    return {
        "enum:200": ch.work_state.value,
        "number:200": num(ch.user_limit if ch.user_limit is not None else ch.config.max_current),
        "object:200": phase_info(dev, ch, now),
        # On while the user lets it charge: an explicit start, or auto_charge without an explicit stop.
        "boolean:200": ch.start_requested or (ch.auto_charge and not ch.paused),
        "number:201": num(round(s.energy_kwh, 3)) if s is not None else 0,
        # Top AC reports the session duration in whole minutes.
        "number:202": int(s.duration_s(now) // 60) if s is not None else 0,
    }


def component_config(comp: Component, ch: ChargerView) -> dict[str, Any]:
    """The virtual component's config (as `<Type>.GetConfig` and `Shelly.GetConfig` show it)."""
    doc: dict[str, Any] = {"id": comp.id, "name": comp.name, "owner": OWNER, "role": comp.role}
    access = "crw" if comp.writable else "cr"
    if comp.role == "work_state":
        doc.update(
            options=list(WORK_STATE_TITLES),
            default_value=WorkState.FREE.value,
            persisted=False,
            meta={"ui": {"view": "label", "titles": dict(WORK_STATE_TITLES)}},
        )
    elif comp.role == "current_limit":
        doc.update(
            min=num(MIN_CURRENT),
            max=num(ch.config.max_current),
            default_value=num(ch.config.max_current),
            persisted=True,
            meta={"ui": {"view": "slider", "unit": "A", "step": 0.1}},
        )
    elif comp.role == "start_charging":
        doc.update(
            default_value=False,
            persisted=False,
            meta={"ui": {"view": "toggle", "titles": ["Stop", "Start"]}},
        )
    elif comp.role == "phase_info":
        doc.update(persisted=False, meta={"ui": {"view": "label"}})
    elif comp.role == "energy_charge":
        doc.update(
            min=0, max=1000, persisted=False, meta={"ui": {"view": "label", "unit": "kWh", "step": 0.001}}
        )
    else:
        doc.update(min=0, max=1440, persisted=False, meta={"ui": {"view": "label", "unit": "min", "step": 1}})
    doc["access"] = access
    return doc
