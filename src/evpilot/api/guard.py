"""ASGI guard against web pages: a Host allow-list (DNS rebinding) and an Origin check (CSRF)."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# GETs that change state as the real device does (Shelly `Boolean.Set`, `Number.Set`, ...): a page
# could fire them from an <img> tag, so they get the same checks as a POST.
_STATEFUL_GET = re.compile(r"^(/chargers/[^/]+)?/rpc(/|$)")


def host_name(value: str) -> str:
    """The host part of a Host header or netloc, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class RequestGuard:
    """Refuses requests whose Host is not allowed and state changes from a foreign Origin."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: Iterable[str] = (),
        origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        names = {host_name(h) for h in hosts if h}
        self.any_host = "*" in names
        self.hosts = frozenset(names - {"*", "0.0.0.0", "::"})
        self.origins = frozenset(o.rstrip("/").lower() for o in origins if o)

    def host_allowed(self, host: str) -> bool:
        """An IP literal, a localhost name, the configured host or an `http.allowed_hosts` entry."""
        name = host_name(host)
        if self.any_host or _is_ip(name) or name in LOCAL_NAMES or name.endswith(".localhost"):
            return True
        return name in self.hosts

    def origin_allowed(self, origin: str, host: str, scheme: str) -> bool:
        """Same origin as the request's own Host, or listed in `http.allowed_origins`."""
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins or "*" in self.origins:
            return True
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc:
            return False
        own = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(scheme, scheme)
        return parts.scheme == own and parts.netloc == host.strip().lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an allowed request on; answer a refused one with 400/403 (or close a WebSocket)."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {}
        for key, value in scope["headers"]:
            if key in (b"host", b"origin", b"sec-fetch-site"):
                headers[key] = value.decode("latin-1")
        host = headers.get(b"host", "")
        if not host or not self.host_allowed(host):
            await self._refuse(scope, receive, send, 400, "bad_host", f"host {host!r} is not allowed")
            return
        method = scope.get("method", "GET")
        unsafe = kind == "websocket" or method not in SAFE_METHODS
        if not unsafe and _STATEFUL_GET.match(scope["path"]):
            unsafe = True
        if unsafe:
            origin = headers.get(b"origin")
            if origin is not None:
                if not self.origin_allowed(origin, host, scope.get("scheme", "http")):
                    await self._refuse(
                        scope, receive, send, 403, "forbidden_origin", f"origin {origin!r} may not do this"
                    )
                    return
            elif headers.get(b"sec-fetch-site") in ("cross-site", "same-site"):
                # A browser request from another site that carries no Origin (an <img>, a link).
                await self._refuse(
                    scope, receive, send, 403, "forbidden_origin", "cross-site request refused"
                )
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status: int, error: str, detail: str
    ) -> None:
        if scope["type"] == "websocket":
            # Closing before accept makes the server answer the upgrade with HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        body = json.dumps({"error": error, "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
