"""Plumbing shared by the device facades: root + per-charger routes, a body-size guard, JSON bytes."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evpilot.api.edge import Problem, Refusal, is_json, not_json
from evpilot.control.runtime import Runtime
from evpilot.inputs import JsonError, read_json

Handler = Callable[[Request, str], Awaitable[Response]]
# Matches the per-charger prefix of a facade path: /chargers/<id>/...
CHARGER_PREFIX = r"(?:/chargers/[^/]+)?"


def invalid_response(problems: list[dict[str, Any]], status: int = 400) -> Response:
    """The native API's one error body (`edge.Refusal.envelope`) for problems given as dicts."""
    return Refusal(status, "invalid", [_problem(p) for p in problems]).response()


def _problem(doc: dict[str, Any]) -> Problem:
    allowed = doc.get("allowed")
    span = (allowed["min"], allowed["max"]) if isinstance(allowed, dict) else None
    return Problem(str(doc["field"]), str(doc["detail"]), span)


class _JsonRequest(Request):
    """A request whose JSON body is read by `evpilot.inputs.read_json` (depth and range limits).

    `NaN`/`Infinity` reach the body model, which refuses them naming the field and its range.
    """

    async def json(self) -> Any:
        """The parsed body; a refused one is a validation error (422) with the reason."""
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = read_json(body, constants=True)
            except JsonError as exc:
                # FastAPI turns this into its `json_invalid` validation error (422).
                raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
        return self._json


class JsonRoute(APIRoute):
    """A FastAPI route whose JSON body goes through evpilot's one JSON reader."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a request that parses JSON with `read_json`; a body that is not
        declared as JSON is refused with 415 (FastAPI would read it as JSON or report a wrong type)."""
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def with_reader(request: Request) -> Response:
            headers = request.headers
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if takes_body and has_body and not is_json(headers.get("content-type", "")):
                return not_json(headers.get("content-type")).response()
            return await handler(_JsonRequest(request.scope, request.receive))

        return with_reader


class Routes:
    """Registers every handler twice: at the root (default charger) and under `/chargers/{cid}`."""

    def __init__(self, rt: Runtime, tag: str) -> None:
        self.rt = rt
        self.tag = tag
        self.root = APIRouter(tags=[tag])
        self.per_charger = APIRouter(prefix="/chargers/{cid}", tags=[f"{tag} (per charger)"])
        self.gets: dict[str, Handler] = {}

    def add(self, method: str, path: str, handler: Handler, summary: str, **extra: Any) -> None:
        """Serve `handler(request, charger_id)` for `method path` at both places."""
        rt = self.rt

        async def at_root(request: Request) -> Response:
            return await handler(request, rt.default_id)

        async def for_charger(request: Request, cid: str) -> Response:
            return await handler(request, cid)

        name = handler.__name__.strip("_")
        if method == "GET":
            self.gets[path] = handler
        self.root.add_api_route(
            path, at_root, methods=[method], name=name, summary=summary, response_class=Response, **extra
        )
        self.per_charger.add_api_route(
            path,
            for_charger,
            methods=[method],
            name=f"{name}_for_charger",
            summary=summary,
            response_class=Response,
            **extra,
        )

    def mount(self, app: FastAPI, fast_get: bool = True) -> None:
        """Include both routers in the app; GET handlers also get the FastGet shortcut."""
        app.include_router(self.root)
        app.include_router(self.per_charger)
        if fast_get and self.gets:
            rt = self.rt
            app.add_middleware(FastGet, routes=dict(self.gets), default=lambda: rt.default_id)


class BodyLimit:
    """ASGI guard: a request to a matching path with a larger body gets the facade's own refusal."""

    def __init__(self, app: ASGIApp, pattern: str, limit: int, refuse: Callable[[], Response]) -> None:
        self.app = app
        self.pattern = re.compile(pattern)
        self.limit = limit
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer it with the refusal when its body is too large."""
        if scope["type"] != "http" or not self.pattern.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self.refuse()(scope, receive, send)
                    return
                await self.app(scope, receive, send)
                return
        # No length given (chunked): read the body up to the limit first, then replay it.
        messages = await read_limited(receive, self.limit)
        if messages is None:
            await self.refuse()(scope, receive, send)
            return
        await self.app(scope, replaying(messages, receive), send)


async def read_limited(receive: Receive, limit: int) -> list[Message] | None:
    """The request's body messages, read up to `limit` bytes; None when the body is larger."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive channel that first hands out `messages`, then reads on from `receive`."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


class FastGet:
    """ASGI shortcut for a facade's read-only GETs: exact path → handler, before routing and middleware.

    The same handlers are also registered as normal routes (for the OpenAPI document); this only
    spares the hot polling paths the router's linear scan and the middleware stack.
    """

    def __init__(self, app: ASGIApp, routes: dict[str, Handler], default: Callable[[], str]) -> None:
        self.app = app
        self.routes = routes
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a known GET directly, pass everything else on."""
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            handler = self.routes.get(path)
            cid = ""
            if handler is None and path.startswith("/chargers/"):
                cid, sep, tail = path[len("/chargers/") :].partition("/")
                handler = self.routes.get("/" + tail) if sep and cid else None
            if handler is not None:
                response = await handler(StarletteRequest(scope, receive), cid or self.default())
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
