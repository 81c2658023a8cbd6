"""The SECC local API's vocabulary: its documents, units and limits as core leases.

Units: currents in A, power in W, energy in kWh, timeouts in ms (core seconds × 1000). An external
limit is a core lease: `amperageLimit` is the lease `lease`, `powerLimit` the lease `lease_power`
(W ÷ 230 V ÷ the phases in use, at every tick); both lapse after `timeout`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evpilot import __version__
from evpilot.control.runtime import Runtime
from evpilot.control.views import LeaseView
from evpilot.core import commands as cmd
from evpilot.core.site import NOMINAL_VOLTAGE

AMPS_LEASE = "lease"
POWER_LEASE = "lease_power"
DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 86_400_000
MAX_AMPS = 80.0
MAX_POWER_W = 55_200.0

# Shelly-like work states translated to OCPP connector status names.
CONNECTOR_STATUS = {
    "charger_free": "Available",
    "charger_insert": "Preparing",
    "charger_wait": "SuspendedEVSE",
    "charger_charging": "Charging",
    "charger_pause": "SuspendedEVSE",
    "charger_end": "Finishing",
    "charger_fault": "Faulted",
}


class LimitsBody(BaseModel):
    """`PUT /api/v1/limits`: omitted fields stay as they are; a null limit hands control back."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool | None = None
    amperageLimit: float | None = Field(default=None, ge=0, le=MAX_AMPS, description="A; below 6 = stop")
    powerLimit: float | None = Field(default=None, ge=0, le=MAX_POWER_W, description="W; below 1,380 = stop")
    timeout: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_MS,
        description=f"ms the limits last (default {DEFAULT_TIMEOUT_MS})",
    )


def limits_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The current external limits of one charger."""
    ch = rt.charger_view(cid)
    now = rt.clock.now()
    # A lease lapsed in clock time is gone even before the next tick drops it.
    amps, power = (
        lease if lease is not None and (lease.expires_at is None or lease.expires_at > now) else None
        for lease in (ch.lease(AMPS_LEASE), ch.lease(POWER_LEASE))
    )
    ends = [lease.expires_at for lease in (amps, power) if lease is not None and lease.expires_at is not None]
    return {
        "enabled": ch.enabled,
        "amperageLimit": amps.amps if amps is not None else None,
        "powerLimit": power_limit(power),
        "timeout": max(0, round((min(ends) - now) * 1000)) if ends else None,
    }


def transaction_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The running transaction (session) of one charger; `id` is null when there is none."""
    ch = rt.charger_view(cid)
    now = rt.clock.now()
    s = ch.session
    meter = ch.meter_kwh if ch.meter_kwh is not None else ch.lifetime_kwh
    session_kwh = s.energy_kwh if s is not None else 0.0
    return {
        "id": s.id if s is not None else None,
        "state": ch.work_state.value,
        "connectorStatus": CONNECTOR_STATUS[ch.work_state.value],
        "vehicleStatus": ch.letter,
        "startedTime": round(s.started_at * 1000) if s is not None else None,
        "duration": round(s.duration_s(now)) if s is not None else 0,
        "chargingTime": round(s.charging_s) if s is not None else 0,
        "meterStart": round(meter - session_kwh, 3),
        "lastMeterValue": round(meter, 3),
        "energy": round(session_kwh, 3),
        "lastActivePower": round(ch.power_w, 1),
        "peakActivePower": round(s.peak_power_w, 1) if s is not None else 0.0,
        "usedPhasesSession": ch.active_phases,
        "idTag": s.id_tag if s is not None else None,
        "allocatedAmperage": round(ch.allocated, 1),
        "commandedAmperage": round(ch.commanded, 1),
        "availableAmperage": round(ch.available_current, 1),
        "signaledAmperage": round(ch.signaled, 1),
        "limitSource": ch.limit_source.text,
    }


def configuration_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The static configuration of one charger."""
    ch = rt.charger_view(cid)
    c = ch.config
    return {
        "chargePointId": c.id,
        "name": c.name,
        "firmwareVersion": f"evpilot {__version__}",
        "phases": c.phases,
        "phase": c.phase,
        "maxAmperage": c.max_current,
        "minAmperage": c.min_current,
        "safeAmperage": c.safe_current,
        "fixedCable": c.fixed_cable,
        "requireAuthorization": c.require_auth,
        "maxTemperature": c.max_temp,
        "circuit": rt.auto_balance.home(cid),
        "nominalVoltage": NOMINAL_VOLTAGE,
        "defaultLimitTimeout": DEFAULT_TIMEOUT_MS,
    }


def power_limit(lease: LeaseView | None) -> int | None:
    """The power limit a lease holds, in W (an amps lease read as W at the phases it was set for)."""
    if lease is None:
        return None
    return round(lease.watts) if lease.watts is not None else None


def limits_commands(cid: str, body: LimitsBody, now: float) -> list[cmd.Command]:
    """The commands a limits request stands for: leases that lapse after `timeout` ms (clock time)."""
    fields = body.model_fields_set
    timeout_ms = body.timeout if body.timeout is not None else DEFAULT_TIMEOUT_MS
    expires = now + timeout_ms / 1000.0
    commands: list[cmd.Command] = []
    if "enabled" in fields and body.enabled is not None:
        commands.append(cmd.SetEnabled(cid, body.enabled))
    if "amperageLimit" in fields:
        commands.append(cmd.SetLease(cid, AMPS_LEASE, body.amperageLimit, expires))
    if "powerLimit" in fields:
        commands.append(cmd.SetPowerLease(cid, POWER_LEASE, body.powerLimit, expires))
    if "timeout" in fields and not fields & {"amperageLimit", "powerLimit"}:
        # A timeout alone re-arms the limits already set (a keep-alive).
        commands.append(cmd.RenewLeases(cid, (AMPS_LEASE, POWER_LEASE), expires))
    return commands


def set_limits(rt: Runtime, cid: str, body: LimitsBody, origin: str) -> None:
    """Apply a validated limits request (see `limits_commands`)."""
    rt.charger(cid)
    rt.apply(limits_commands(cid, body, rt.clock.now()), origin)
