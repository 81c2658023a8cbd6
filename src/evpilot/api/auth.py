"""Authentication of every HTTP API: users (HTTP basic, `POST /api/login`), API tokens, brute-force
throttling and the ASGI gate that refuses a request in its facade's own error convention.

Passwords are argon2 hashes in the config (`evpilot auth hash`); an API token is `evp_<id>_<secret>`,
of which the store keeps the id, the role and a SHA-256 of the 256-bit secret (a random secret needs no
slow hash). A verified password is remembered as an HMAC under a per-process key, so HTTP basic
clients that poll do not pay an argon2 verification per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from evpilot.api.access import Face, facade_of, required_role
from evpilot.api.edge import Problem, Refusal, json_response
from evpilot.config import AuthModel, Role
from evpilot.security import PasswordCheck, Throttle, parse_basic
from evpilot.store.base import TokenRecord, TokenStore

log = logging.getLogger("evpilot.auth")

TOKEN_PREFIX = "evp_"
REALM = "evpilot"
SCOPE_KEY = "evpilot.principal"
# Browsers cannot set headers on a WebSocket: the dashboard offers its token as this subprotocol.
SUBPROTOCOL_PREFIX = "bearer."


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_token(role: Role, name: str, now: float) -> tuple[str, TokenRecord, str]:
    """A new API token: (the token to hand out once, its record, the hash to store)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", TokenRecord(token_id, role.value, name, now), _sha(secret)


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of an `evp_<id>_<secret>` token, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    return (token_id, secret) if sep and token_id and secret else None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: name (user or `token:<id>`), role and how it proved itself."""

    name: str
    role: Role
    via: str


class Authenticator:
    """Users from the config, API tokens from the store, login sessions in memory."""

    def __init__(
        self, cfg: AuthModel, tokens: TokenStore | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.users = {u.name: u for u in cfg.users}
        self.tokens = tokens
        self.clock = clock
        self.throttle = Throttle(clock)
        self._sessions: dict[str, tuple[Principal, float]] = {}
        self.passwords = PasswordCheck()

    async def password(self, name: str, password: str) -> Principal | None:
        """The user if `password` is theirs (argon2, off the event loop; remembered when right)."""
        user = self.users.get(name)
        stored = user.password_hash if user is not None else None
        # Verified also for an unknown name (against a dummy hash): a wrong name costs as much.
        if not await self.passwords.verify(name, stored, password) or user is None:
            return None
        return Principal(name, user.role, "basic")

    def login(self, principal: Principal) -> tuple[str, float]:
        """A session token for the user and its lifetime (s)."""
        now = self.clock()
        for token in [t for t, (_, exp) in self._sessions.items() if exp <= now]:
            del self._sessions[token]
        token = secrets.token_urlsafe(32)
        ttl = self.cfg.session_ttl_s
        self._sessions[token] = (Principal(principal.name, principal.role, "session"), now + ttl)
        return token, ttl

    def logout(self, token: str) -> bool:
        """End a login session; False if there was none."""
        return self._sessions.pop(token, None) is not None

    async def bearer(self, token: str) -> Principal | None:
        """The caller of a session or API token."""
        session = self._sessions.get(token)
        if session is not None:
            if session[1] > self.clock():
                return session[0]
            del self._sessions[token]
            return None
        parts = split_token(token)
        if parts is None or self.tokens is None:
            return None
        found = await asyncio.to_thread(self.tokens.token, parts[0])
        if found is None or not hmac.compare_digest(found[1], _sha(parts[1])):
            return None
        record = found[0]
        try:
            role = Role(record.role)
        except ValueError:
            return None
        return Principal(f"token:{record.id}", role, "token")

    async def resolve(self, header: str) -> tuple[Principal | None, str]:
        """The caller an Authorization header proves, and the name it claimed (for the log)."""
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            parts = split_token(value)
            claimed = f"token:{parts[0]}" if parts else "session"
            return await self.bearer(value), claimed
        basic = parse_basic(header)
        if basic is not None:
            name, password = basic
            if password is None:
                return None, name
            return await self.password(name, password), name
        return None, f"({scheme[:16]} scheme)"


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def refusal_response(face: Face, status: int, detail: str, headers: dict[str, str]) -> Response:
    """A 401/403/429 in the convention of the facade serving the path."""
    refusal = Refusal(
        status,
        {401: "unauthorized", 403: "forbidden"}.get(status, "too_many"),
        [Problem("", detail)],
        headers,
    )
    if face is Face.ESP32EVSE:
        from evpilot.api.esp32evse.rest import plain

        # The firmware's own text for 401; its server has no 403 or 429 of its own: plain text.
        if status == 401:
            return plain(refusal)
        return PlainTextResponse(detail, status_code=status, headers=headers or None)
    if face is Face.SMARTEVSE:
        return json_response({"error": detail}, status, headers)
    if face is Face.SHELLY:
        return json_response({"code": status, "message": detail}, status, headers)
    return refusal.response()


class AuthGate:
    """ASGI gate: a request that needs a role must prove a user or token that has it (401, 403, 429)."""

    def __init__(self, app: ASGIApp, auth: Authenticator, shelly_digest: bool = False) -> None:
        self.app = app
        self.auth = auth
        # Shelly's own digest password (`shelly.password`) still answers requests without our header.
        self.shelly_digest = shelly_digest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a public or permitted request on; refuse the others."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope["evpilot.auth"] = True
        path: str = scope["path"]
        method = scope.get("method", "GET")
        need = required_role(kind, method, path, scope.get("query_string", b""))
        if need is None:
            await self.app(scope, receive, send)
            return
        face = facade_of(path)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None and kind == "websocket":
            token = socket_token(scope)
            header = None if token is None else f"Bearer {token}"
        digest = header is not None and header[:7].lower() == "digest "
        if face is Face.SHELLY and self.shelly_digest and (header is None or digest):
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        challenge = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        if header is None:
            log.info("refused %s %s from %s: no credentials", method, path, client)
            await self._refuse(scope, receive, send, face, 401, "authentication required", challenge)
            return
        wait = self.auth.throttle.retry_after(client)
        if wait is not None:
            log.warning("refused %s %s from %s: too many failed logins", method, path, client)
            headers = {"Retry-After": str(max(1, round(wait + 0.5)))}
            await self._refuse(scope, receive, send, face, 429, "too many failed logins", headers)
            return
        principal, claimed = await self.auth.resolve(header)
        if principal is None:
            self.auth.throttle.failed(client)
            log.warning("refused %s %s from %s: bad credentials for %r", method, path, client, claimed)
            await self._refuse(scope, receive, send, face, 401, "bad credentials", challenge)
            return
        self.auth.throttle.succeeded(client)
        if not principal.role.may(need):
            log.warning(
                "refused %s %s from %s: %s is %s, needs %s",
                method, path, client, principal.name, principal.role.value, need.value,
            )  # fmt: skip
            detail = f"{principal.role.value} may not do this (needs {need.value})"
            await self._refuse(scope, receive, send, face, 403, detail, {})
            return
        scope[SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        face: Face,
        status: int,
        detail: str,
        headers: dict[str, str],
    ) -> None:
        response = refusal_response(face, status, detail, headers)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
            await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
            await send({"type": "websocket.http.response.body", "body": bytes(response.body)})
            return
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})


def socket_subprotocol(scope: Scope) -> str | None:
    """The `bearer.<token>` subprotocol a browser's WebSocket carries its token in, if any."""
    for proto in scope.get("subprotocols") or ():
        if isinstance(proto, str) and proto.startswith(SUBPROTOCOL_PREFIX):
            return proto
    return None


def socket_token(scope: Scope) -> str | None:
    """The token of a `bearer.<token>` subprotocol."""
    proto = socket_subprotocol(scope)
    return None if proto is None else proto[len(SUBPROTOCOL_PREFIX) :] or None


def principal_of(scope: Scope) -> Principal | None:
    """The authenticated caller of a request or socket (None without `auth`)."""
    found = scope.get(SCOPE_KEY)
    return found if isinstance(found, Principal) else None


def may_command(scope: Scope) -> bool:
    """Whether the caller may command chargers (always, without `auth`)."""
    if scope.get("evpilot.auth") is None:
        return True
    principal = principal_of(scope)
    return principal is not None and principal.role.may(Role.OPERATOR)


class LoginBody(BaseModel):
    """A user's name and password."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginDoc(BaseModel):
    """A session token for `Authorization: Bearer`, its lifetime in s and the user's role."""

    model_config = ConfigDict(extra="forbid")

    token: str
    expires_in_s: float
    role: Role


class LogoutDoc(BaseModel):
    """Whether a login session was ended (false for an API token or basic credentials)."""

    model_config = ConfigDict(extra="forbid")
    ended: bool


def build_router(auth: Authenticator | None) -> APIRouter:
    """`POST /api/login` and `POST /api/logout`."""
    r = APIRouter(prefix="/api", tags=["auth"])

    def off() -> Response:
        return Refusal(
            404, "not_found", [Problem("", "authentication is off (no auth in the config)")]
        ).response()

    @r.post("/login", summary="Log in: a session token for the dashboard", response_model=LoginDoc)
    async def login(request: Request, body: LoginBody) -> Response:
        if auth is None:
            return off()
        client = _client(request.scope)
        wait = auth.throttle.retry_after(client)
        if wait is not None:
            log.warning("refused login of %r from %s: too many failed logins", body.name[:64], client)
            headers = {"Retry-After": str(max(1, round(wait + 0.5)))}
            return Refusal(429, "too_many", [Problem("", "too many failed logins")], headers).response()
        principal = await auth.password(body.name, body.password)
        if principal is None:
            auth.throttle.failed(client)
            log.warning("refused login of %r from %s: bad credentials", body.name[:64], client)
            return Refusal(401, "unauthorized", [Problem("", "bad name or password")]).response()
        auth.throttle.succeeded(client)
        token, ttl = auth.login(principal)
        log.info("login of %r from %s", principal.name, client)
        doc: dict[str, Any] = {"token": token, "expires_in_s": ttl, "role": principal.role.value}
        return json_response(doc)

    @r.post("/logout", summary="End the login session of the Bearer token", response_model=LogoutDoc)
    async def logout(request: Request) -> Response:
        if auth is None:
            return off()
        header = request.headers.get("authorization", "")
        ended = header[:7].lower() == "bearer " and auth.logout(header[7:].strip())
        return json_response({"ended": ended})

    return r


def ws_forbidden_frame(command: str) -> dict[str, Any]:
    """The error frame a socket command gets from a caller who may not command."""
    detail = "viewer may not command (needs operator)"
    return {"topic": "error", "message": {"command": command[:64], "detail": detail}}
