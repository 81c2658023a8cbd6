"""Shelly Gen2 RPC: error objects and codes, arguments, and the numbers as the firmware prints them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from evpilot.api.edge import number
from evpilot.core.errors import CommandError
from evpilot.inputs import JsonError, read_json

INVALID_ARGUMENT = -103
NOT_FOUND = -105
NO_HANDLER = 404
UNAUTHORIZED = 401


class RpcError(Exception):
    """A Shelly RPC error object `{code, message}`."""

    def __init__(self, code: int, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stale = stale

    def body(self) -> dict[str, Any]:
        """The error object."""
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> RpcError:
    return RpcError(INVALID_ARGUMENT, message)


def http_status(code: int) -> int:
    # Real firmware answers 500 for every RPC error but 404/401; evpilot keeps 5xx for its own faults.
    if code in (NO_HANDLER, UNAUTHORIZED):
        return code
    return 400


def num(x: float) -> float | int:
    """A number as Shelly prints it: integral values without a fraction."""
    return int(x) if float(x).is_integer() else x


def params_dict(params: object) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid("params must be an object")
    return params


def int_arg(params: Mapping[str, Any], key: str) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"Argument '{key}' must be an integer")
    return value


def query_params(query: bytes) -> dict[str, Any]:
    """Query arguments as a Shelly device reads them: each value is JSON (`role="x"`, `value=10`)."""
    params: dict[str, Any] = {}
    for part in query.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, raw = part.partition("=")
        key, raw = unquote_plus(key), unquote_plus(raw)
        try:
            params[key] = read_json(raw)
        except JsonError as exc:
            shown = f"Argument '{key[:40]}': {raw[:60]!r}"
            raise invalid(f"{shown} is not a JSON value (quote strings): {exc}") from None
    return params


def number_arg(what: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """A JSON number argument (`edge.number`: finite, not bool, within [low, high] when given)."""
    try:
        return number(what, value, low, high)
    except CommandError as exc:
        raise invalid(f"{what} {exc.message}") from None


def refused(exc: CommandError) -> RpcError:
    """A command the core refused, as an invalid-argument error object."""
    return invalid(exc.message)
