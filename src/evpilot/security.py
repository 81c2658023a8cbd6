"""Credentials and transport security shared by the HTTP APIs and the OCPP backend.

argon2 password hashes (`evpilot auth hash`) and their verification off the event loop, HTTP basic
headers, the brute-force throttle, the loopback test for listen addresses and the TLS server context.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASHER = PasswordHasher()
# Failed logins a client may make before it must wait; then the wait doubles per failure.
FREE_FAILURES = 5
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 300.0
# Clients remembered by the throttle and verified passwords remembered (oldest forgotten first).
MAX_CLIENTS = 10_000
MAX_VERIFIED = 1_000


def hash_password(password: str) -> str:
    """An argon2id hash of `password` (`auth.users[].password_hash`, an OCPP station's `password_hash`)."""
    return HASHER.hash(password)


class PasswordCheck:
    """argon2 verification in a worker thread; a verified (name, password, hash) is remembered as an HMAC
    under a per-process key, so clients that authenticate often pay for one verification only."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        # A wrong name costs as much as a wrong password.
        self._dummy = hash_password(secrets.token_urlsafe(16))

    async def verify(self, name: str, stored: str | None, password: str) -> bool:
        """Whether `password` matches the argon2 hash `stored` (None: no such name, always False)."""
        mac = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        if stored is not None and self._verified.get(mac) == stored:
            return True
        against = stored if stored is not None else self._dummy

        def run() -> bool:
            try:
                return HASHER.verify(against, password)
            except (VerificationError, InvalidHashError):
                return False

        if not await asyncio.to_thread(run) or stored is None:
            return False
        self._verified[mac] = stored
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)
        return True


def basic_header(name: str, password: str) -> str:
    """The `Authorization` header value of HTTP basic credentials."""
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def parse_basic(value: str) -> tuple[str, str | None] | None:
    """(name, password) of a `Basic ...` header; password None when there is no ':'; None if not basic."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "?", None
    name, sep, password = text.partition(":")
    return name[:64], password if sep else None


class Throttle:
    """Failed logins per client: after FREE_FAILURES, each one doubles the wait (up to MAX_DELAY_S)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._state: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds the client must still wait, or None."""
        state = self._state.get(client)
        if state is None:
            return None
        wait = state[1] - self.clock()
        return wait if wait > 0 else None

    def failed(self, client: str) -> None:
        """Count a failure; from the (FREE_FAILURES + 1)th on, the client waits."""
        count = self._state.pop(client, (0, 0.0))[0] + 1
        delay = 0.0
        if count > FREE_FAILURES:
            delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (count - FREE_FAILURES - 1))
        self._state[client] = (count, self.clock() + delay)
        while len(self._state) > MAX_CLIENTS:
            self._state.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """Forget the client's failures."""
        self._state.pop(client, None)


def is_loopback_host(host: str) -> bool:
    """Whether `host` is a loopback address or `localhost` (reachable from this machine only)."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BadTls(ValueError):
    """A `tls` certificate or key cannot be used; the message names the config key and why."""


def server_tls_context(cert: Path, key: Path, where: str = "http.tls") -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or later) with this certificate chain and key, or BadTls."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise BadTls(f"{where}: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise BadTls(f"{where}: cannot load certificate {cert} with key {key}: {exc}") from None
    return context
