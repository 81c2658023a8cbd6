"""SECC local API facade (`/api/v1/charging`, `/transaction`, `/configuration`, `/limits`, `/api/ws`).

Units and leases as in `secc.vocab`. Errors are evpilot's one envelope (`edge.Refusal`):
`{"error", "detail", "problems", "field"}` with HTTP 400/404/413.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from pydantic import ValidationError
from starlette.responses import Response

from evpilot.api.edge import Problem, Refusal, json_response, read_json_body
from evpilot.api.facade import Routes
from evpilot.api.secc.vocab import LimitsBody, configuration_doc, limits_doc, set_limits, transaction_doc
from evpilot.api.secc.ws import Frame, run_socket
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core.charger import Charger
from evpilot.core.errors import CommandError

MAX_BODY = 16 * 1024
# The origin of the commands this API sends.
ORIGIN = "rest:secc"


def mount(app: FastAPI, rt: Runtime) -> None:
    """Serve the SECC API at the root (default charger) and under `/chargers/{id}/`."""

    def charger(cid: str) -> Charger:
        try:
            return rt.charger(cid)
        except UnknownCharger:
            raise Refusal(404, "not_found", [Problem("charger", f"no charger {cid!r}")]) from None

    def guarded(fn: Callable[[Request, str], Any]) -> Callable[[Request, str], Any]:
        async def run(request: Request, cid: str) -> Response:
            try:
                return await fn(request, cid)  # type: ignore[no-any-return]
            except Refusal as refusal:
                return refusal.response()
            except CommandError as exc:
                return Refusal.of_command(exc).response()

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
        # The SECC API never asked for a content type: any body is read as JSON.
        doc = await read_json_body(request, MAX_BODY, need_type=False)
        try:
            limits = LimitsBody.model_validate(doc)
        except ValidationError as exc:
            problems = [
                Problem(".".join(str(p) for p in err.get("loc", ())) or "body", err.get("msg", "invalid"))
                for err in exc.errors()
            ]
            raise Refusal(400, "invalid", problems) from None
        set_limits(rt, cid, limits, ORIGIN)
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
        await run_socket(socket, rt, cid, charging_frame(cid), origin="ws:secc")
