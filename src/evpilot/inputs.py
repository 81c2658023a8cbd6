"""The one reader of numbers and JSON from outside: every facade parses external input through here.

Numbers are ASCII decimal text only: `[+-]digits[.digits][e[+-]digits]` for decimals, `[+-]digits` for
integers. Refused: `_` separators (`1_0`), non-ASCII digits (`٣`, `１２`), hex, any whitespace inside or
around the text, `nan`/`inf`/`Infinity`, and anything beyond ±`MAX_MAGNITUDE` (so `1e308` can neither
overflow an `int()` nor become infinite when scaled). An integer field refuses `-0`; a decimal field
reads `-0`/`-0.0` as 0.0 (meters send a rounded tiny negative current as `-0.0`), so a negative zero
never travels further in.

JSON is read with the same rules: the constants `NaN`, `Infinity`, `-Infinity` are refused, every number
is finite and within ±`MAX_MAGNITUDE`, and nesting deeper than `MAX_DEPTH` is refused before parsing
(the standard parser would raise `RecursionError` at a few thousand levels).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# The largest integer every JSON client (JavaScript included) represents exactly; far beyond any
# current, power, energy or id a device API takes, and small enough that scaling never overflows.
MAX_MAGNITUDE = 2**53
# Longer number text is refused before conversion (int() of thousands of digits is slow, then refused).
MAX_TEXT = 40
# Deepest JSON nesting accepted; the deepest legitimate document (a Shelly frame) has 4 levels.
MAX_DEPTH = 32

_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A JSON string (with escapes) or one bracket: strings are skipped when counting the depth.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class NumberError(ValueError):
    """Text or a value that is not an accepted number; the message says why."""


class JsonError(ValueError):
    """A body or frame that is not acceptable JSON; the message says why."""


def _shown(text: str) -> str:
    return repr(text[:MAX_TEXT])


def parse_int(text: str) -> int:
    """An ASCII decimal integer within ±MAX_MAGNITUDE (`-0` refused)."""
    if len(text) > MAX_TEXT or not _INT.fullmatch(text):
        raise NumberError(f"{_shown(text)} is not an integer (ASCII decimal digits only)")
    value = int(text)
    if value == 0 and text.startswith("-"):
        raise NumberError(f"{_shown(text)} is not an integer (negative zero)")
    if abs(value) > MAX_MAGNITUDE:
        raise NumberError(f"{_shown(text)} is not an integer in range (±{MAX_MAGNITUDE})")
    return value


def parse_float(text: str) -> float:
    """An ASCII decimal number (optional fraction and exponent), finite and within ±MAX_MAGNITUDE."""
    if len(text) > MAX_TEXT or not _DECIMAL.fullmatch(text):
        raise NumberError(f"{_shown(text)} is not a number (ASCII decimal digits only)")
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise NumberError(f"{_shown(text)} is not a number in range (finite, ±{MAX_MAGNITUDE})")
    return value + 0.0  # -0.0 + 0.0 is 0.0


def check_number(value: object) -> float:
    """A number already decoded (from JSON): int or float, not bool, finite, within ±MAX_MAGNITUDE."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NumberError(f"{str(value)[:MAX_TEXT]!r} is not a number")
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_MAGNITUDE:
        raise NumberError(f"{str(value)[:MAX_TEXT]!r} is out of range")
    return float(value) + 0.0


def _json_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number")


def _json_int(text: str) -> int:
    if len(text) > MAX_TEXT:
        raise JsonError(f"number {text[:MAX_TEXT]}... is out of range")
    value = int(text)
    if abs(value) > MAX_MAGNITUDE:
        raise JsonError(f"number {text} is out of range")
    return value


def _json_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_TEXT else math.inf
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise JsonError(f"number {text[:MAX_TEXT]} is out of range")
    return value


def json_depth_ok(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether no array/object in `text` nests deeper than `limit` (strings are skipped)."""
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return False
        elif token in "]}":
            depth -= 1
    return True


def read_json(data: bytes | bytearray | str, constants: bool = False) -> Any:
    """Parse a JSON document from outside under the rules above; raises JsonError.

    With `constants`, `NaN`/`Infinity` are decoded as floats, for a validating model to refuse by field.
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise JsonError("the JSON text is not UTF-8") from None
    else:
        text = data
    if not json_depth_ok(text):
        raise JsonError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        constant = float if constants else _json_constant
        return json.loads(text, parse_constant=constant, parse_int=_json_int, parse_float=_json_float)
    except JsonError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JsonError(f"malformed JSON ({exc})"[:200]) from None
