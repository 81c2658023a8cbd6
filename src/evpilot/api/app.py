"""The HTTP application: every facade mounted on one server, with uniform error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from evpilot import __version__
from evpilot.api import auth, charging_access, esp32evse, native, secc, shelly, smartevse
from evpilot.api.auth import Authenticator, AuthGate
from evpilot.api.edge import Problem, Refusal, too_large
from evpilot.api.facade import BodyLimit, invalid_response
from evpilot.api.guard import RequestGuard
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core.errors import CommandError
from evpilot.store.base import TokenStore

MAX_BODY = 64 * 1024
log = logging.getLogger("evpilot")


def _allowed_range(request: Request, loc: tuple[Any, ...]) -> tuple[float, float] | None:
    """The (min, max) bounds of the body field at `loc`, read from the route's body model."""
    field = getattr(request.scope.get("route"), "body_field", None)
    if field is None or len(loc) != 2 or loc[0] != "body":
        return None
    annotation = field.field_info.annotation
    for model in (annotation, *get_args(annotation)):
        if isinstance(model, type) and issubclass(model, BaseModel) and loc[1] in model.model_fields:
            meta = model.model_fields[loc[1]].metadata
            low = next((getattr(m, a) for m in meta for a in ("ge", "gt") if hasattr(m, a)), None)
            high = next((getattr(m, a) for m in meta for a in ("le", "lt") if hasattr(m, a)), None)
            if low is not None and high is not None:
                return float(low), float(high)
    return None


def create_app(rt: Runtime, manage_runtime: bool = True) -> FastAPI:
    """The FastAPI app for a runtime; with `manage_runtime` it starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        modbus = None
        if manage_runtime and rt.config.modbus.enabled:
            from evpilot.api.modbus import ModbusFacade

            # Before the runtime starts: a port or serial device that cannot be opened leaves no
            # session behind.
            modbus = ModbusFacade(rt, rt.config.modbus)
            try:
                await modbus.start()
            except OSError as exc:
                log.error("%s", exc)
                raise
        app.state.modbus = modbus
        if manage_runtime:
            await rt.start()
        bridge = None
        if manage_runtime and rt.config.mqtt.url is not None:
            from evpilot.api.mqtt import MqttBridge

            bridge = MqttBridge(rt, rt.config.mqtt)
            await bridge.start()
        app.state.mqtt = bridge
        ocpp = None
        if manage_runtime and rt.config.ocpp.url is not None:
            from evpilot.api.ocpp import OcppService

            ocpp = OcppService(rt)
            await ocpp.start()
        app.state.ocpp = ocpp
        boards = []
        if manage_runtime and any(ch.thingsboard for ch in rt.config.chargers):
            from evpilot.api.thingsboard import devices

            boards = devices(rt)
            for board in boards:
                await board.start()
        app.state.thingsboard = boards
        try:
            yield
        finally:
            if modbus is not None:
                try:
                    await modbus.stop()
                except Exception:
                    log.exception("stopping the Modbus server failed")
            for board in boards:
                try:
                    await board.stop()
                except Exception:
                    log.exception("stopping the ThingsBoard connection of %s failed", board.cid)
            if ocpp is not None:
                try:
                    await ocpp.stop()
                except Exception:
                    log.exception("stopping the OCPP link failed")
            # The runtime saves sessions and counters even if the bridge fails to stop.
            if bridge is not None:
                try:
                    await bridge.stop()
                except Exception:
                    log.exception("stopping the MQTT bridge failed")
            if manage_runtime:
                await rt.stop()

    # Swagger UI and ReDoc assets come from the installed package, so /docs works offline.
    app = FastAPIOffline(
        title="evpilot",
        version=__version__,
        description="Smart-charging controller: native REST API, WebSocket and simulator control.",
        lifespan=lifespan,
    )
    app.state.runtime = rt

    app.add_middleware(
        BodyLimit,
        pattern=r"^/(api|chargers)/",
        limit=MAX_BODY,
        refuse=lambda: too_large(MAX_BODY).response(),
    )

    @app.exception_handler(UnknownCharger)
    async def unknown_charger(request: Request, exc: UnknownCharger) -> Response:
        problem = Problem("charger", f"no charger {exc.args[0]!r}")
        return Refusal(404, "not_found", [problem], chargers=sorted(rt.engine.chargers)).response()

    @app.exception_handler(CommandError)
    async def command_error(request: Request, exc: CommandError) -> Response:
        return Refusal.of_command(exc).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            problem: dict[str, Any] = {"field": ".".join(loc) or "body", "detail": err.get("msg", "invalid")}
            if err.get("type") == "json_invalid":
                # The reader's reason (too deep, out of range, where the syntax breaks) instead of a position.
                reason = err.get("ctx", {}).get("error", "")
                problem = {"field": "body", "detail": f"JSON decode error: {reason}"}
            allowed = _allowed_range(request, tuple(err.get("loc", ())))
            if allowed is not None:
                problem["allowed"] = {"min": allowed[0], "max": allowed[1]}
                problem["detail"] += f" (allowed {allowed[0]:g} to {allowed[1]:g})"
            problems.append(problem)
        return invalid_response(problems, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        problem = Problem("", str(exc.detail))
        return Refusal(exc.status_code, "http", [problem], exc.headers).response()

    authenticator = None
    if rt.config.auth is not None:
        tokens = rt.store if isinstance(rt.store, TokenStore) else None
        authenticator = Authenticator(rt.config.auth, tokens)
    app.state.auth = authenticator
    app.include_router(auth.build_router(authenticator))
    app.include_router(native.build_router(rt))
    app.include_router(charging_access.build_router(rt))
    esp32evse.mount(app, rt)
    smartevse.mount(app, rt)
    secc.mount(app, rt)
    shelly.mount(app, rt)

    # Outermost: no facade, fast path or body reader sees a request the guard refuses.
    if authenticator is not None:
        app.add_middleware(AuthGate, auth=authenticator, shelly_digest=rt.config.shelly.password is not None)
    http = rt.config.http
    app.add_middleware(RequestGuard, hosts=[http.host, *http.allowed_hosts], origins=http.allowed_origins)

    page = resources.files("evpilot.web").joinpath("index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    # The dashboard's own assets, read once: every file the page needs comes from evpilot itself.
    web = resources.files("evpilot.web")
    assets = {
        name: (web.joinpath(name).read_bytes(), media)
        for name, media in (("app.js", "text/javascript"), ("app.css", "text/css"))
    }

    @app.get("/web/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            return Refusal(404, "not_found", [Problem("name", f"no asset {name!r}")]).response()
        body, media = assets[name]
        return Response(body, media_type=f"{media}; charset=utf-8", headers={"Cache-Control": "no-cache"})

    return app
