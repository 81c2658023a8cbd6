"""The edge every HTTP facade shares: one body reader, one error envelope, one reader of JSON values.

A refused request is a `Refusal`: HTTP status, an error code and the problems, each naming its field.
The native API and SECC answer it as evpilot's JSON envelope (`Refusal.envelope`); device APIs whose
firmware has its own convention (ESP32-EVSE plain text, SmartEVSE `{param: message}`, Shelly RPC error
objects) render the same refusal their way at their edge. Text numbers are read by `evpilot.inputs`;
decoded JSON values by `number`, `integer` and `boolean` here, which refuse like the core does
(`CommandError`, naming the field and the allowed range), so every facade maps one exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from evpilot.core.errors import CommandError, check_range
from evpilot.inputs import MAX_MAGNITUDE, JsonError, NumberError, check_number, read_json


@dataclass(frozen=True, slots=True)
class Problem:
    """One refused input: its field (empty: the request as a whole), why, and its allowed (min, max).

    `shown` is what a device convention prints for it instead of `detail` (SmartEVSE's `false`).
    """

    field: str
    detail: str
    allowed: tuple[float, float] | None = None
    shown: object = None

    def doc(self) -> dict[str, Any]:
        """The problem in the envelope: field, detail and `allowed: {min, max}` when known."""
        doc: dict[str, Any] = {"field": self.field, "detail": self.detail}
        if self.allowed is not None:
            doc["allowed"] = {"min": self.allowed[0], "max": self.allowed[1]}
        return doc


class Refusal(Exception):
    """A refused request: HTTP status, error code (`invalid`, `not_found`, `too_large`, ...) and problems."""

    def __init__(
        self,
        status: int,
        error: str,
        problems: Sequence[Problem],
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.error = error
        self.problems = tuple(problems)
        self.headers = dict(headers or {})
        self.extra = extra
        super().__init__(self.sentence)

    @classmethod
    def invalid(
        cls, field: str, detail: str, allowed: tuple[float, float] | None = None, status: int = 400
    ) -> Refusal:
        """One invalid input."""
        return cls(status, "invalid", [Problem(field, detail, allowed)])

    @classmethod
    def of_command(cls, exc: CommandError, status: int = 400) -> Refusal:
        """A command the core refused."""
        return cls(status, "invalid", [Problem(exc.field, exc.message, exc.allowed)])

    @property
    def sentence(self) -> str:
        """The problems as one sentence (`field: detail; ...`)."""
        return "; ".join(f"{p.field}: {p.detail}" if p.field else p.detail for p in self.problems)

    def envelope(self) -> dict[str, Any]:
        """evpilot's one error body: `error`, `detail`, `problems` and, with a single problem, its `field`."""
        doc: dict[str, Any] = {"error": self.error, "detail": self.sentence}
        doc["problems"] = [p.doc() for p in self.problems]
        if len(self.problems) == 1 and self.problems[0].field:
            doc["field"] = self.problems[0].field
        doc.update(self.extra)
        return doc

    def response(self) -> Response:
        """The refusal as evpilot's JSON envelope."""
        return json_response(self.envelope(), self.status, self.headers or None)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response (no re-validation or re-encoding by FastAPI)."""
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def too_large(limit: int) -> Refusal:
    """A body over `limit` bytes (413)."""
    return Refusal(413, "too_large", [Problem("body", f"request body over {limit} bytes")])


def is_json(content_type: str) -> bool:
    """Whether a content type declares JSON (`application/json` or `application/*+json`)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def not_json(given: str | None) -> Refusal:
    """A body that is not declared as JSON (415), saying what was given."""
    detail = "content-type must be application/json" + (f", got {given!r}" if given else " (none given)")
    return Refusal(415, "invalid", [Problem("content-type", detail)])


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read in chunks and refused (413) as soon as it passes `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def read_json_body(request: Request, limit: int, need_type: bool = True) -> Any:
    """The body as JSON (`evpilot.inputs.read_json`): 415 if not declared JSON, 413, 400 if malformed."""
    if need_type and not is_json(request.headers.get("content-type", "")):
        raise not_json(request.headers.get("content-type"))
    body = await read_body(request, limit)
    try:
        return read_json(body)
    except JsonError as exc:
        raise Refusal.invalid("body", str(exc)) from None


def _range(low: float | None, high: float | None) -> tuple[float, float] | None:
    return (low, high) if low is not None and high is not None else None


def number(
    field: str, value: object, low: float | None = None, high: float | None = None, unit: str = ""
) -> float:
    """A decoded JSON number (int or float, not bool), finite, within [low, high] when given."""
    allowed = _range(low, high)
    try:
        amount = check_number(value)
    except NumberError:
        span = f" between {low:g} and {high:g}{unit}" if allowed is not None else ""
        raise CommandError(field, f"must be a number{span}", allowed) from None
    if allowed is not None:
        return check_range(field, amount, allowed[0], allowed[1], unit)
    return amount


def integer(
    field: str, value: object, low: int | None = None, high: int | None = None, unit: str = ""
) -> int:
    """A decoded JSON integer (not bool, not 1.0), within [low, high] when given."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_MAGNITUDE:
        span = f" between {low} and {high}{unit}" if low is not None and high is not None else ""
        raise CommandError(field, f"must be an integer{span}", _range(low, high))
    if low is not None and high is not None:
        check_range(field, value, low, high, unit)
    return value


def boolean(field: str, value: object) -> bool:
    """A decoded JSON boolean."""
    if not isinstance(value, bool):
        raise CommandError(field, "must be true or false")
    return value
