"""Who may do what: the role each HTTP request needs, and which facade's error convention answers it.

One table for every facade, so a route cannot be forgotten: reads need `viewer`, charger commands
`operator`, site settings, meter feeds and the simulator `admin`; an unknown state change needs `admin`.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import parse_qsl

from evpilot.config import Role

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Pages anyone may load: the dashboard (it logs in itself), the API documentation and its assets.
PUBLIC_PAGES = frozenset({"/", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
# The dashboard's own script and stylesheet load before its login form can show.
PUBLIC_PREFIXES = ("/static-offline-docs/", "/web/")
# SmartEVSE `POST /settings` parameters that command the charger; any other one is a site setting.
SMARTEVSE_OPERATOR_PARAMS = frozenset(
    {"mode", "override_current", "disable_override_current", "enable_C2", "starttime", "stoptime", "repeat"}
)
# Shelly RPC methods that answer without authentication, as on the device.
SHELLY_PUBLIC = frozenset({"Shelly.GetDeviceInfo"})


class Face(StrEnum):
    """The API a path belongs to (its error convention)."""

    NATIVE = "native"
    SECC = "secc"
    ESP32EVSE = "esp32evse"
    SMARTEVSE = "smartevse"
    SHELLY = "shelly"


def charger_tail(path: str) -> str:
    """The path without a `/chargers/<id>` prefix of the device facades."""
    if path.startswith("/chargers/"):
        _, sep, tail = path[len("/chargers/") :].partition("/")
        if sep:
            return "/" + tail
    return path


def facade_of(path: str) -> Face:
    """The facade serving `path`."""
    if path.startswith("/api/") and not path.startswith("/api/v1/"):
        return Face.NATIVE
    tail = charger_tail(path)
    if tail.startswith(("/api/v1/state", "/api/v1/info")):
        return Face.ESP32EVSE
    if tail.startswith("/api/v1/") or tail == "/api/ws":
        return Face.SECC
    if tail in ("/settings", "/currents", "/ev_meter"):
        return Face.SMARTEVSE
    if tail in ("/shelly", "/rpc") or tail.startswith("/rpc/"):
        return Face.SHELLY
    return Face.NATIVE


def shelly_role(method: str) -> Role | None:
    """The role a Shelly RPC method needs (None: public)."""
    if method in SHELLY_PUBLIC:
        return None
    verb = method.rpartition(".")[2]
    return Role.VIEWER if verb.startswith(("Get", "List")) else Role.OPERATOR


def required_role(kind: str, method: str, path: str, query: bytes = b"") -> Role | None:
    """The least role a request needs; None for a public one. `kind` is `http` or `websocket`."""
    if path == "/api/login":
        return None
    face = facade_of(path)
    tail = charger_tail(path)
    if face is Face.SHELLY:
        if tail == "/shelly":
            return None
        if tail.startswith("/rpc/"):
            return shelly_role(tail[len("/rpc/") :])
        # A frame names its method in the body; frames and the RPC socket may command.
        return Role.OPERATOR
    if kind == "websocket":
        # State frames are a read; each text command on the socket needs an operator.
        return Role.VIEWER
    if method in SAFE_METHODS:
        if path in PUBLIC_PAGES or path.startswith(PUBLIC_PREFIXES):
            return None
        return Role.VIEWER
    if face is Face.NATIVE:
        if path == "/api/logout":
            return Role.VIEWER
        if path.startswith("/api/chargers/"):
            return Role.OPERATOR
        return Role.ADMIN  # settings, site limits and relay, meter feeds, the simulator
    if face in (Face.SECC, Face.ESP32EVSE):
        return Role.OPERATOR
    if face is Face.SMARTEVSE:
        if tail != "/settings":
            return Role.ADMIN  # meter feeds
        names = {name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
        return Role.OPERATOR if names <= SMARTEVSE_OPERATOR_PARAMS else Role.ADMIN
    return Role.ADMIN
