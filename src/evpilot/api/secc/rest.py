"""SECC local API facade (`/api/v1/charging`, `/transaction`, `/configuration`, `/limits`, `/api/ws`).

Units at this edge: currents in A, power in W, energy in kWh, timeouts in ms (core seconds × 1000).
An external limit is a core lease: `amperageLimit` is the lease `lease`, `powerLimit` the lease
`lease_power` (W ÷ 230 V ÷ the phases in use, at every tick); both lapse after `timeout`. Errors are JSON
objects `{"error", "field", "detail"}` with HTTP 400/404/413.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from evpilot import __version__
from evpilot.api.facade import Routes, json_response
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core.charger import Charger, Lease
from evpilot.core.errors import CommandError
from evpilot.core.site import NOMINAL_VOLTAGE
from evpilot.inputs import JsonError, NumberError, parse_float, read_json

AMPS_LEASE = "lease"
POWER_LEASE = "lease_power"
DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 86_400_000
MAX_AMPS = 80.0
MAX_POWER_W = 55_200.0
MAX_BODY = 16 * 1024
# Seconds a WebSocket close may wait for a client that does not read.
CLOSE_WAIT_S = 10.0

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


class Refused(Exception):
    """A refused request: HTTP status and the JSON error body."""

    def __init__(self, status: int, error: str, field: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"error": error, "field": field, "detail": detail}


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
    ch = rt.charger(cid)
    now = rt.clock.now()
    amps = ch.leases.get(AMPS_LEASE)
    power = ch.leases.get(POWER_LEASE)
    ends = [lease.expires_at for lease in (amps, power) if lease is not None and lease.expires_at is not None]
    return {
        "enabled": ch.enabled,
        "amperageLimit": amps.value if amps is not None else None,
        "powerLimit": power_limit(power),
        "timeout": max(0, round((min(ends) - now) * 1000)) if ends else None,
    }


def transaction_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The running transaction (session) of one charger; `id` is null when there is none."""
    ch = rt.charger(cid)
    now = rt.clock.now()
    s = ch.session
    meter = ch.meter_kwh if ch.meter_kwh is not None else ch.lifetime_kwh
    session_kwh = s.energy_kwh if s is not None else 0.0
    return {
        "id": s.id if s is not None else None,
        "state": ch.work_state().value,
        "connectorStatus": CONNECTOR_STATUS[ch.work_state().value],
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
        "limitSource": ch.allocation_source,
    }


def configuration_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The static configuration of one charger."""
    ch = rt.charger(cid)
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
        "circuit": c.circuit,
        "nominalVoltage": NOMINAL_VOLTAGE,
        "defaultLimitTimeout": DEFAULT_TIMEOUT_MS,
    }


def power_limit(lease: Lease | None) -> int | None:
    """The power limit a lease holds, in W (an amps lease read as W at the phases it was set for)."""
    if lease is None:
        return None
    return round(lease.watts) if lease.watts is not None else None


def set_limits(rt: Runtime, cid: str, body: LimitsBody) -> None:
    """Apply a validated limits request: leases that lapse after `timeout` ms (clock time)."""
    rt.charger(cid)
    fields = body.model_fields_set
    timeout_ms = body.timeout if body.timeout is not None else DEFAULT_TIMEOUT_MS
    expires = rt.clock.now() + timeout_ms / 1000.0

    def act(c: Charger) -> None:
        if "enabled" in fields and body.enabled is not None:
            c.set_enabled(body.enabled)
        if "amperageLimit" in fields:
            c.set_lease(AMPS_LEASE, body.amperageLimit, expires)
        if "powerLimit" in fields:
            c.set_power_lease(POWER_LEASE, body.powerLimit, expires)
        if "timeout" in fields and not fields & {"amperageLimit", "powerLimit"}:
            # A timeout alone re-arms the limits already set (a keep-alive).
            for name in (AMPS_LEASE, POWER_LEASE):
                lease = c.leases.get(name)
                if lease is not None:
                    c.set_lease(name, lease.value, expires)

    rt.command(cid, act, persist="enabled" in fields)


def ws_command(rt: Runtime, cid: str, text: str) -> str | None:
    """Run one text command (`setEnabled\\ntrue|false`, `setCurrentLimit\\n<A>`); returns an error or None."""
    name, sep, arg = text.strip().partition("\n")
    arg = arg.strip(" \t\r\n")
    if not sep:
        return "expected '<command>\\n<argument>'"
    try:
        if name == "setEnabled":
            if arg.lower() not in ("true", "false"):
                return "setEnabled takes true or false"
            set_limits(rt, cid, LimitsBody(enabled=arg.lower() == "true"))
        elif name == "setCurrentLimit":
            try:
                amps = parse_float(arg)
            except NumberError:
                return "setCurrentLimit takes a number of amperes"
            if not 0 <= amps <= MAX_AMPS:
                return f"setCurrentLimit must be between 0 and {MAX_AMPS:g} A"
            set_limits(rt, cid, LimitsBody(amperageLimit=amps))
        else:
            return f"unknown command {name[:40]!r}"
    except (CommandError, UnknownCharger) as exc:
        return str(exc)
    return None


Frame = dict[str, Any]


async def run_socket(
    socket: WebSocket, rt: Runtime, cid: str, translate: Callable[[Frame], Frame | None] | None = None
) -> None:
    """Push state frames (through `translate`) and take text commands until the client goes away.

    Frames wait in the client's bounded queue (error replies too); a client that falls so far behind
    that a frame does not fit is dropped: closed with 1013 (try again later), so it reconnects and
    starts again from a full state instead of silently missing frames.
    """
    await socket.accept()
    q = rt.subscribe()

    async def read() -> None:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            error = "binary frames are not accepted" if text is None else ws_command(rt, cid, text)
            if error is not None:
                frame = {"topic": "error", "message": {"command": (text or "")[:64], "detail": error}}
                q.offer({"raw": frame})

    async def write() -> None:
        while True:
            frame = await q.get()
            out = frame["raw"] if "raw" in frame else (translate(frame) if translate else frame)
            if out is not None:
                await socket.send_text(json.dumps(out, separators=(",", ":")))

    tasks = {
        asyncio.create_task(read(), name="ws-read"),
        asyncio.create_task(write(), name="ws-write"),
        asyncio.create_task(q.overflowed.wait(), name="ws-overflow"),
    }
    overflowed = False
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        overflowed = q.overflowed.is_set()
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError | OSError):
                rt.supervisor.record("websocket", exc)
    except asyncio.CancelledError:
        pass
    finally:
        rt.unsubscribe(q)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        # The close waits for the client to take what is already sent; one that never reads is left
        # to the server's transport (bounded buffers) after CLOSE_WAIT_S.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT_S):
                if overflowed:
                    await socket.close(code=1013, reason="client too slow: frames dropped")
                else:
                    await socket.close()


def mount(app: FastAPI, rt: Runtime) -> None:
    """Serve the SECC API at the root (default charger) and under `/chargers/{id}/`."""

    def charger(cid: str) -> Charger:
        try:
            return rt.charger(cid)
        except UnknownCharger:
            raise Refused(404, "not_found", "charger", f"no charger {cid!r}") from None

    def guarded(fn: Callable[[Request, str], Any]) -> Callable[[Request, str], Any]:
        async def run(request: Request, cid: str) -> Response:
            try:
                return await fn(request, cid)  # type: ignore[no-any-return]
            except Refused as refused:
                return json_response(refused.body, refused.status)
            except CommandError as exc:
                return json_response({"error": "invalid", "field": exc.field, "detail": exc.message}, 400)

        run.__name__ = fn.__name__
        return run

    def getter(name: str, doc: Callable[[str], dict[str, Any]]) -> Callable[[Request, str], Any]:
        async def get(request: Request, cid: str) -> Response:
            charger(cid)
            return json_response(doc(cid))

        get.__name__ = name
        return guarded(get)

    async def put_limits(request: Request, cid: str) -> Response:
        charger(cid)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise Refused(413, "too_large", "body", f"request body over {MAX_BODY} bytes")
        try:
            limits = LimitsBody.model_validate(read_json(body))
        except JsonError as exc:
            raise Refused(400, "invalid", "body", str(exc)) from None
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or "body"
            raise Refused(400, "invalid", field, err.get("msg", "invalid")) from None
        set_limits(rt, cid, limits)
        return json_response(limits_doc(rt, cid))

    routes = Routes(rt, "SECC")
    routes.add("GET", "/api/v1/charging", getter("charging", rt.charging_doc), "Momentary charging values")
    routes.add(
        "GET",
        "/api/v1/transaction",
        getter("transaction", lambda cid: transaction_doc(rt, cid)),
        "The running transaction (session)",
    )
    routes.add(
        "GET",
        "/api/v1/configuration",
        getter("configuration", lambda cid: configuration_doc(rt, cid)),
        "Static charger configuration",
    )
    routes.add(
        "GET",
        "/api/v1/limits",
        getter("limits", lambda cid: limits_doc(rt, cid)),
        "External limits (leases) now in force",
    )
    routes.add(
        "PUT",
        "/api/v1/limits",
        guarded(put_limits),
        "Set external limits (leases)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": LimitsBody.model_json_schema()}},
            }
        },
    )
    routes.mount(app)

    def charging_frame(cid: str) -> Callable[[Frame], Frame | None]:
        last: list[dict[str, Any]] = []

        def translate(frame: Frame) -> Frame | None:
            if frame["topic"] != "charger" or frame["message"].get("id") != cid:
                return None
            doc = rt.charging_doc(cid)
            if last and last[0] == doc:
                return None
            last[:] = [doc]
            return {"topic": "charging", "message": doc}

        return translate

    @app.websocket("/chargers/{cid}/api/ws")
    async def charger_ws(socket: WebSocket, cid: str) -> None:
        if cid not in rt.engine.chargers:
            await socket.close(code=4404)
            return
        await run_socket(socket, rt, cid, charging_frame(cid))
