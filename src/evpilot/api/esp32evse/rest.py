"""ESP32-EVSE REST facade (`/api/v1/state`, `/api/v1/info`): the firmware's names and units.

Units as in `esp32evse.vocab`. Errors are the firmware's plain-text bodies with
its status codes (400, 401, 404, 413, 415); writes answer `OK` as text.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from evpilot import __version__
from evpilot.api.auth import principal_of
from evpilot.api.edge import Problem, Refusal, boolean, json_response, number, read_json_body
from evpilot.api.esp32evse.vocab import (
    WS_PER_KWH,
    charging_current,
    shown_state,
    tenths,
)
from evpilot.api.facade import CHARGER_PREFIX, BodyLimit, Routes
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core import commands as cmd
from evpilot.core.charger import Charger
from evpilot.core.errors import CommandError

# The firmware refuses request bodies over 50 KB.
MAX_BODY = 50 * 1024
REALM = 'Basic realm="Users"'

# The default texts of ESP-IDF's http server for these status codes.
TEXT_400 = "Server unable to understand request due to invalid syntax"
TEXT_401 = "This request requires authentication"
TEXT_404 = "This URI does not exist"

# The origin of the commands this API sends.
ORIGIN = "rest:esp32evse"


# The firmware's plain-text body for each refusal status; 400 adds the problems.
TEXT_413 = "JSON size must be less than 50KB!"
TEXT_415 = "Not JSON body"
_TEXTS = {401: TEXT_401, 404: TEXT_404, 413: TEXT_413, 415: TEXT_415}


def plain(refusal: Refusal) -> Response:
    """A refusal as the firmware answers it: its status code and plain text."""
    text = _TEXTS.get(refusal.status, f"{TEXT_400}: {refusal.sentence}")
    return PlainTextResponse(text, status_code=refusal.status, headers=refusal.headers or None)


def _too_large() -> Response:
    return PlainTextResponse(TEXT_413, status_code=413)


# Each converter reads one value in the firmware's units and returns the core command for it; the
# runtime checks its range (`check`), and a refusal is given back in the firmware's name and unit.
def _enabled(cid: str, value: Any) -> cmd.Command:
    return cmd.SetEnabled(cid, boolean("enabled", value))


def _available(cid: str, value: Any) -> cmd.Command:
    return cmd.SetAvailable(cid, boolean("available", value))


def _charging_current(cid: str, value: Any) -> cmd.Command:
    return cmd.SetUserLimit(cid, tenths(number("chargingCurrent", value)))


def _consumption_limit(cid: str, value: Any) -> cmd.Command:
    return cmd.SetEnergyCap(cid, number("consumptionLimit", value) / WS_PER_KWH or None)


def _charging_time_limit(cid: str, value: Any) -> cmd.Command:
    return cmd.SetTimeCap(cid, number("chargingTimeLimit", value) / 60.0 or None)


def _under_power_limit(cid: str, value: Any) -> cmd.Command:
    return cmd.SetUnderPower(cid, number("underPowerLimit", value) or None)


# Firmware units per core unit, and the unit's name, of the fields whose range the core checks.
UNITS = {
    "chargingCurrent": (1.0, " A"),
    "consumptionLimit": (WS_PER_KWH, " Ws"),
    "chargingTimeLimit": (60.0, " s"),
    "underPowerLimit": (1.0, " W"),
}


def check(rt: Runtime, field: str, value: Any, command: cmd.Command) -> cmd.Command:
    """`command` if the runtime takes it, else a CommandError in the firmware's name and unit."""
    try:
        rt.check(command)
    except CommandError as exc:
        if exc.allowed is None or field not in UNITS:
            raise CommandError(field, exc.message) from None
        scale, unit = UNITS[field]
        low, high = exc.allowed[0] * scale, exc.allowed[1] * scale
        shown = f"{value:g}{unit}" if isinstance(value, int | float) else repr(value)
        message = f"{shown} is out of range (allowed {low:g} to {high:g}{unit})"
        raise CommandError(field, message, (low, high)) from None
    return command


STATE_FIELDS: dict[str, Callable[[str, Any], cmd.Command]] = {
    "available": _available,
    "enabled": _enabled,
    "chargingCurrent": _charging_current,
    "consumptionLimit": _consumption_limit,
    "chargingTimeLimit": _charging_time_limit,
    "underPowerLimit": _under_power_limit,
}


def state_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The firmware's `GET /api/v1/state` document for one charger."""
    ch = rt.charger_view(cid)
    s = ch.session
    now = rt.clock.now()
    return {
        "state": shown_state(ch),
        "available": ch.available,
        "enabled": ch.enabled,
        "pendingAuth": ch.plugged and not ch.authorized,
        "limitReached": ch.limit_reached is not None,
        "chargingCurrent": charging_current(ch.user_limit, ch.config.max_current),
        "consumptionLimit": round((ch.energy_cap_kwh or 0.0) * WS_PER_KWH),
        "chargingTimeLimit": round((ch.time_cap_min or 0.0) * 60.0),
        "underPowerLimit": round(ch.under_power_w or 0.0),
        "errors": sorted(e.value for e in ch.errors) or None,
        "sessionTime": round(s.duration_s(now)) if s is not None else 0,
        "chargingTime": round(s.charging_s) if s is not None else 0,
        "consumption": round(s.energy_kwh * WS_PER_KWH) if s is not None else 0,
        "totalConsumption": round(ch.lifetime_kwh * WS_PER_KWH),
        "power": round(ch.power_w),
        "voltage": [round(v, 1) for v in ch.voltages],
        "current": [round(a, 1) for a in ch.currents],
    }


def info_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The firmware's `GET /api/v1/info` document (the 'chip' is evpilot)."""
    ch = rt.charger_view(cid)
    return {
        "uptime": round(rt.clock.now() - rt.started_at),
        "appVersion": __version__,
        "appDate": "",
        "appTime": "",
        "idfVersion": f"evpilot {__version__}",
        "chip": "evpilot",
        "chipCores": 1,
        "chipRevision": 0,
        "heapSize": 0,
        "maxHeapSize": 0,
        "mac": "00:00:00:00:00:00",
        "ip": "",
        "macAp": "00:00:00:00:00:00",
        "ipAp": "",
        "temperatureSensorCount": 1,
        "temperatureLow": round(ch.temperature, 2),
        "temperatureHigh": round(ch.temperature, 2),
    }


def _scalar_body(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


_NUMBER = {"type": "number"}
_BOOLEAN = {"type": "boolean"}
_STATE_BODY = {
    "type": "object",
    "properties": {
        "available": _BOOLEAN,
        "enabled": _BOOLEAN,
        "chargingCurrent": _NUMBER,
        "consumptionLimit": _NUMBER,
        "chargingTimeLimit": _NUMBER,
        "underPowerLimit": _NUMBER,
    },
}


def mount(app: FastAPI, rt: Runtime) -> None:
    """Serve the ESP32-EVSE API at the root (default charger) and under `/chargers/{id}/`."""
    auth = rt.config.esp32evse
    expected: bytes | None = None
    if auth.username or auth.password:
        expected = f"{auth.username}:{auth.password}".encode()

    def authorize(request: Request) -> None:
        if expected is None or principal_of(request.scope) is not None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if scheme.lower() != "basic" or not secrets.compare_digest(given, expected):
            raise Refusal(
                401, "unauthorized", [Problem("authorization", TEXT_401)], {"WWW-Authenticate": REALM}
            )

    def charger(cid: str) -> Charger:
        try:
            return rt.charger(cid)
        except UnknownCharger:
            raise Refusal(404, "not_found", [Problem("charger", f"no charger {cid!r}")]) from None

    def guarded(fn: Callable[[Request, str], Any]) -> Callable[[Request, str], Any]:
        async def run(request: Request, cid: str) -> Response:
            try:
                authorize(request)
                return await fn(request, cid)  # type: ignore[no-any-return]
            except Refusal as refusal:
                return plain(refusal)
            except CommandError as exc:
                return plain(Refusal.of_command(exc))

        run.__name__ = fn.__name__
        return run

    def setter(field: str) -> Callable[[Request, str], Any]:
        convert = STATE_FIELDS[field]

        async def set_one(request: Request, cid: str) -> Response:
            charger(cid)
            value = await read_json_body(request, MAX_BODY)
            rt.apply(check(rt, field, value, convert(cid, value)), ORIGIN)
            return PlainTextResponse("OK")

        set_one.__name__ = f"set_{field}"
        return guarded(set_one)

    async def get_state(request: Request, cid: str) -> Response:
        charger(cid)
        return json_response(state_doc(rt, cid))

    async def get_info(request: Request, cid: str) -> Response:
        charger(cid)
        return json_response(info_doc(rt, cid))

    async def set_state(request: Request, cid: str) -> Response:
        charger(cid)
        body = await read_json_body(request, MAX_BODY)
        if not isinstance(body, dict):
            raise Refusal.invalid("body", "must be a JSON object")
        known = [k for k in body if k in STATE_FIELDS]
        if not known:
            raise Refusal.invalid("body", f"no known field (one of {', '.join(STATE_FIELDS)})")
        rt.apply([check(rt, k, body[k], STATE_FIELDS[k](cid, body[k])) for k in known], ORIGIN)
        return PlainTextResponse("OK")

    async def authorize_session(request: Request, cid: str) -> Response:
        charger(cid)
        rt.apply(cmd.Authorize(cid), ORIGIN)
        return PlainTextResponse("OK")

    async def reset_total_consumption(request: Request, cid: str) -> Response:
        charger(cid)
        rt.apply(cmd.ResetLifetime(cid), ORIGIN)
        return PlainTextResponse("OK")

    routes = Routes(rt, "ESP32-EVSE")
    base = "/api/v1"
    routes.add("GET", f"{base}/state", guarded(get_state), "Live charging state (firmware fields)")
    routes.add("GET", f"{base}/info", guarded(get_info), "Firmware / device info")
    routes.add(
        "POST",
        f"{base}/state",
        guarded(set_state),
        "Set several state fields at once",
        openapi_extra=_scalar_body("object with any of the settable fields", _STATE_BODY),
    )
    scalars = (
        ("enabled", "enabled", _BOOLEAN, "Enable / disable charging"),
        ("available", "available", _BOOLEAN, "Put the EVSE in / out of service"),
        ("charging-current", "chargingCurrent", _NUMBER, "Charging current (A, 0.1 A steps)"),
        ("consumption-limit", "consumptionLimit", _NUMBER, "Session energy limit (Ws, 0 = none)"),
        ("charging-time-limit", "chargingTimeLimit", _NUMBER, "Session time limit (s, 0 = none)"),
        ("under-power-limit", "underPowerLimit", _NUMBER, "Under-power stop threshold (W, 0 = none)"),
    )
    for path, field, schema, summary in scalars:
        routes.add(
            "POST",
            f"{base}/state/{path}",
            setter(field),
            summary,
            openapi_extra=_scalar_body(f"bare JSON {schema['type']}", schema),
        )
    routes.add("POST", f"{base}/state/authorize", guarded(authorize_session), "Authorize a pending charge")
    routes.add(
        "POST",
        f"{base}/state/reset-total-consumption",
        guarded(reset_total_consumption),
        "Zero the lifetime energy counter",
    )
    routes.mount(app)
    app.add_middleware(
        BodyLimit, pattern=rf"^{CHARGER_PREFIX}{base}/(state|info)", limit=MAX_BODY, refuse=_too_large
    )
