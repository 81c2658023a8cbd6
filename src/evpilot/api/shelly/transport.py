"""The Shelly facade's transports: HTTP GET/POST `/rpc/<Method>`, `POST /rpc` frames, WS `/rpc`, `/shelly`.

Served for the default charger at the root and for every charger under `/chargers/{id}/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from evpilot.api.auth import principal_of
from evpilot.api.edge import Refusal, read_body
from evpilot.api.facade import read_limited, replaying
from evpilot.api.shelly.auth import PUBLIC_METHODS
from evpilot.api.shelly.components import Device
from evpilot.api.shelly.facade import ShellyFacade
from evpilot.api.shelly.rpc import (
    INVALID_ARGUMENT,
    NOT_FOUND,
    UNAUTHORIZED,
    RpcError,
    http_status,
    invalid,
    params_dict,
    query_params,
)
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.inputs import JsonError, read_json

MAX_BODY = 64 * 1024

_SHELLY_PATH = re.compile(r"^(?:/chargers/[^/]+)?/(?:shelly|rpc)(?:/.*)?$")


_GET_PATH = re.compile(r"^(?:/chargers/([^/]+))?/(?:shelly|rpc/([^/]+))$")
ShellyGet = Callable[[str | None], Awaitable[Response]]
RestGet = Callable[[Request, str | None, str], Awaitable[Response]]


class _ShellyFront:
    """In front of everything on the Shelly paths: refuses oversized bodies with a Shelly error object,
    and answers GETs directly (they are polled hard; this spares them the router's linear scan and the
    middleware stack). The same handlers are also normal routes, for POST and the OpenAPI document.
    """

    def __init__(self, app: ASGIApp, shelly: ShellyGet, rest: RestGet) -> None:
        self.app = app
        self.shelly = shelly
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _SHELLY_PATH.match(scope["path"]):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                await _too_large()(scope, receive, send)
                return
            if length is None and b"transfer-encoding" in headers:
                # A chunked body is read up to the limit here, so it is refused exactly as a sized one.
                messages = await read_limited(receive, MAX_BODY)
                if messages is None:
                    await _too_large()(scope, receive, send)
                    return
                receive = replaying(messages, receive)
            m = _GET_PATH.match(scope["path"]) if scope["method"] == "GET" else None
            if m is not None:
                cid, method = m.group(1), m.group(2)
                if method is None:
                    response = await self.shelly(cid)
                else:
                    response = await self.rest(Request(scope, receive), cid, method)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_large() -> JSONResponse:
    return JSONResponse(
        {"code": INVALID_ARGUMENT, "message": f"request body over {MAX_BODY} bytes"}, status_code=413
    )


async def _read_body(request: Request) -> bytes:
    try:
        return await read_body(request, MAX_BODY)
    except Refusal as refusal:
        raise invalid(refusal.problems[0].detail) from None


def _request_uri(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    qs = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + ("?" + qs.decode("latin-1") if qs else "")


def build_router(facade: ShellyFacade) -> tuple[APIRouter, ShellyGet, RestGet]:
    """The Shelly routes at the root and under `/chargers/{cid}`, and the two GET handlers."""
    r = APIRouter(tags=["shelly"])

    def http_auth(request: Request, dev: Device, method: str, frame_auth: object = None) -> Response | None:
        auth = facade.auth
        if auth is None or method in PUBLIC_METHODS or principal_of(request.scope) is not None:
            return None
        state = "bad"
        if frame_auth is not None:
            state = auth.check_frame(dev.device_id, frame_auth)
        if state != "ok":
            header_state = auth.check_header(
                dev.device_id, request.headers.get("authorization"), request.method, _request_uri(request)
            )
            state = "ok" if header_state == "ok" else ("stale" if "stale" in (state, header_state) else "bad")
        if state == "ok":
            return None
        return JSONResponse(
            {"code": UNAUTHORIZED, "message": "Unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": auth.www_authenticate(dev.device_id, state == "stale")},
        )

    def rest_error(exc: RpcError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=http_status(exc.code))

    def lookup(cid: str | None) -> Device | JSONResponse:
        try:
            return facade.device(cid)
        except UnknownCharger:
            return JSONResponse({"code": NOT_FOUND, "message": f"No charger {cid!r}"}, status_code=404)

    async def shelly(cid: str | None) -> Response:
        dev = lookup(cid)
        if isinstance(dev, Response):
            return dev
        return JSONResponse(facade.device_info(dev))

    async def rest(request: Request, cid: str | None, method: str) -> Response:
        dev = lookup(cid)
        if isinstance(dev, Response):
            return dev
        denied = http_auth(request, dev, method)
        if denied is not None:
            return denied
        try:
            params = query_params(request.scope.get("query_string", b""))
            if request.method == "POST":
                body = await _read_body(request)
                if body.strip():
                    try:
                        doc = read_json(body)
                    except JsonError as exc:
                        raise invalid(f"malformed JSON body: {exc}") from None
                    if not isinstance(doc, dict):
                        raise invalid("the body must be a JSON object")
                    if isinstance(doc.get("method"), str) and "params" in doc:
                        # A whole frame posted to /rpc/<Method> (evcc does this): use its params.
                        if doc["method"] != method:
                            raise invalid(f"frame method {doc['method']!r} differs from the URL's {method!r}")
                        doc = params_dict(doc["params"])
                    params.update(doc)
            result = facade.call(dev, method, params, "HTTP_in")
        except RpcError as exc:
            return rest_error(exc)
        return JSONResponse(result)

    async def frame(request: Request, cid: str | None) -> Response:
        dev = lookup(cid)
        if isinstance(dev, Response):
            return dev
        try:
            body = await _read_body(request)
            try:
                doc = read_json(body)
            except JsonError as exc:
                raise invalid(f"malformed JSON frame: {exc}") from None
        except RpcError as exc:
            return JSONResponse({"id": None, "src": dev.device_id, "error": exc.body()}, status_code=400)
        if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
            err = invalid("a frame is an object with a string 'method'")
            return JSONResponse({"id": None, "src": dev.device_id, "error": err.body()}, status_code=400)
        reply: dict[str, Any] = {"id": doc.get("id"), "src": dev.device_id}
        if isinstance(doc.get("src"), str):
            reply["dst"] = doc["src"]
        denied = http_auth(request, dev, doc["method"], doc.get("auth"))
        if denied is not None:
            return denied
        try:
            reply["result"] = facade.call(dev, doc["method"], doc.get("params"), "HTTP_in")
        except RpcError as exc:
            reply["error"] = exc.body()
        return JSONResponse(reply)

    @r.get("/shelly", summary="Shelly device info (default charger)")
    async def shelly_root() -> Response:
        return await shelly(None)

    @r.get("/chargers/{cid}/shelly", summary="Shelly device info of one charger")
    async def shelly_charger(cid: str) -> Response:
        return await shelly(cid)

    # One route per HTTP method: a route with two methods gets one operation id twice in OpenAPI.
    async def rpc_root(request: Request, method: str) -> Response:
        return await rest(request, None, method)

    async def rpc_charger(request: Request, cid: str, method: str) -> Response:
        return await rest(request, cid, method)

    for verb in ("GET", "POST"):
        low = verb.lower()
        r.add_api_route(
            "/rpc/{method}",
            rpc_root,
            methods=[verb],
            name=f"rpc_{low}",
            operation_id=f"shelly_rpc_{low}",
            summary=f"Shelly RPC call ({verb}), arguments as JSON values",
        )
        r.add_api_route(
            "/chargers/{cid}/rpc/{method}",
            rpc_charger,
            methods=[verb],
            name=f"rpc_charger_{low}",
            operation_id=f"shelly_rpc_charger_{low}",
            summary=f"Shelly RPC call ({verb}) on a charger",
        )

    @r.post("/rpc", summary="Shelly RPC frame {id, src, method, params}")
    async def frame_root(request: Request) -> Response:
        return await frame(request, None)

    @r.post("/chargers/{cid}/rpc", summary="Shelly RPC frame on a charger")
    async def frame_charger(request: Request, cid: str) -> Response:
        return await frame(request, cid)

    @r.websocket("/rpc")
    async def ws_root(socket: WebSocket) -> None:
        await _serve_ws(facade, socket, None)

    @r.websocket("/chargers/{cid}/rpc")
    async def ws_charger(socket: WebSocket, cid: str) -> None:
        await _serve_ws(facade, socket, cid)

    return r, shelly, rest


async def _serve_ws(facade: ShellyFacade, socket: WebSocket, cid: str | None) -> None:
    """RPC frames over a WebSocket; after the client's first request, NotifyFullStatus then NotifyStatus."""
    try:
        dev = facade.device(cid)
    except UnknownCharger:
        await socket.close(code=1008)
        return
    await socket.accept()
    signed_in = principal_of(socket.scope) is not None
    rt = facade.rt
    lock = asyncio.Lock()
    peer: dict[str, Any] = {"src": None, "last": None}

    async def send(doc: dict[str, Any]) -> None:
        async with lock:
            await socket.send_text(json.dumps(doc))

    async def notify() -> None:
        q = rt.subscribe()
        try:
            while True:
                item = await q.get()
                if peer["last"] is None or item.get("topic") != "charger":
                    continue
                if item["message"].get("id") != dev.cid:
                    continue
                status = facade.shelly_status(dev)
                changed = {k: v for k, v in status.items() if _settled(peer["last"].get(k)) != _settled(v)}
                peer["last"] = status
                if changed:
                    params = {"ts": round(rt.clock.now(), 2), **changed}
                    await send(
                        {"src": dev.device_id, "dst": peer["src"], "method": "NotifyStatus", "params": params}
                    )
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        except Exception as exc:  # counted and logged; the client is closed so it reconnects afresh
            rt.supervisor.record("websocket", exc)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await socket.close(code=1011)
        finally:
            rt.unsubscribe(q)

    pump = asyncio.create_task(notify(), name=f"shelly-ws-{dev.cid}")
    try:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect":
                break
            text = msg.get("text")
            if text is None and msg.get("bytes") is not None:
                text = msg["bytes"].decode("utf-8", errors="replace")
            reply, trusted = await _ws_frame(facade, dev, text or "", signed_in)
            if reply is None:
                continue
            await send(reply)
            src = reply.get("dst")
            if trusted and isinstance(src, str) and peer["src"] is None:
                peer["src"] = src
                status = facade.shelly_status(dev)
                peer["last"] = status
                params = {"ts": round(rt.clock.now(), 2), **status}
                await send({"src": dev.device_id, "dst": src, "method": "NotifyFullStatus", "params": params})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await pump
        with contextlib.suppress(Exception):
            await socket.close()


# Sys fields that change every second; like a device, they alone do not trigger a NotifyStatus.
_CLOCK_FIELDS = frozenset({"unixtime", "uptime", "time"})


def _settled(doc: object) -> object:
    if isinstance(doc, dict) and "uptime" in doc:
        return {k: v for k, v in doc.items() if k not in _CLOCK_FIELDS}
    return doc


async def _ws_frame(
    facade: ShellyFacade, dev: Device, text: str, signed_in: bool = False
) -> tuple[dict[str, Any] | None, bool]:
    """The reply to one WebSocket frame (None for a notification) and whether the caller is now trusted.

    A client is trusted (gets status notifications) after a successful request that needed no password
    or proved it.
    """
    if len(text) > MAX_BODY:
        return {
            "id": None,
            "src": dev.device_id,
            "error": invalid(f"frame over {MAX_BODY} bytes").body(),
        }, False
    try:
        doc = read_json(text)
    except JsonError as exc:
        error = invalid(f"malformed JSON frame: {exc}").body()
        return {"id": None, "src": dev.device_id, "error": error}, False
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        err = invalid("a frame needs a string 'method'").body()
        return {"id": None, "src": dev.device_id, "error": err}, False
    if "id" not in doc:
        return None, False
    reply: dict[str, Any] = {"id": doc["id"], "src": dev.device_id}
    if isinstance(doc.get("src"), str):
        reply["dst"] = doc["src"]
    method = doc["method"]
    try:
        auth = None if signed_in else facade.auth
        if auth is not None and method not in PUBLIC_METHODS:
            state = auth.check_frame(dev.device_id, doc.get("auth"))
            if state != "ok":
                raise auth.frame_challenge(dev.device_id, stale=state == "stale")
        reply["result"] = facade.call(dev, method, doc.get("params"), "WS_in")
    except RpcError as exc:
        reply["error"] = exc.body()
        return reply, False
    return reply, signed_in or facade.auth is None or method not in PUBLIC_METHODS


# ---- mounting -------------------------------------------------------------------------------------


def mount(app: FastAPI, rt: Runtime) -> ShellyFacade:
    """Serve the Shelly facade on `app` (auto_balance and a simulated EM belong to the runtime)."""
    facade = ShellyFacade(rt)
    router, shelly, rest = build_router(facade)
    app.include_router(router)
    app.add_middleware(_ShellyFront, shelly=shelly, rest=rest)
    app.state.shelly = facade
    return facade
