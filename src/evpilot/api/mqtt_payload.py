"""MQTT messages and payload parsing shared by the native, SmartEVSE and ESP32-EVSE topics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evpilot import inputs
from evpilot.api.ha_discovery import OFF, ON
from evpilot.inputs import NumberError

# Longer payloads are refused before decoding: no command needs more than a few dozen bytes.
MAX_PAYLOAD = 256
_BOOLS = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}


class Rejected(Exception):
    """An incoming topic or payload was refused; the message says why."""


class Misrouted(Rejected):
    """A refused topic that still belongs to a known charger (its error goes there)."""

    def __init__(self, cid: str, message: str) -> None:
        super().__init__(message)
        self.cid = cid


@dataclass(frozen=True, slots=True)
class Out:
    """One message to publish; `dedupe` skips it when the topic already carries this payload."""

    topic: str
    payload: str
    retain: bool = True
    qos: int = 0
    dedupe: bool = True


def payload_text(payload: object) -> str:
    """The payload as stripped UTF-8 text (refuses long, binary and control-character payloads)."""
    if payload is None:
        data = b""
    elif isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    else:
        data = str(payload).encode()
    if len(data) > MAX_PAYLOAD:
        raise Rejected(f"payload too long ({len(data)} bytes, at most {MAX_PAYLOAD})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("payload is not UTF-8 text") from None
    # ASCII whitespace only: a payload padded with other spaces is not a clean value.
    text = text.strip(" \t\r\n")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise Rejected("payload contains control characters")
    return text


def parse_number(text: str, what: str) -> float:
    """A finite ASCII decimal number (inputs.parse_float)."""
    try:
        return inputs.parse_float(text)
    except NumberError as exc:
        raise Rejected(f"{what}: {exc}") from None


def parse_int(text: str, what: str) -> int:
    """An ASCII decimal integer (inputs.parse_int)."""
    try:
        return inputs.parse_int(text)
    except NumberError as exc:
        raise Rejected(f"{what}: {exc}") from None


def parse_ints(text: str, count: int, what: str, form: str) -> Sequence[int]:
    """`count` ASCII decimal integers separated by colons (`form` names them in the refusal)."""
    parts = text.split(":")
    try:
        if len(parts) != count:
            raise NumberError(f"{count} values expected")
        return [inputs.parse_int(p) for p in parts]
    except NumberError as exc:
        raise Rejected(f"{what}: {text[:60]!r} is not {form} (integers): {exc}") from None


def parse_bool(text: str, what: str) -> bool:
    """ON/OFF, true/false or 1/0 (any case)."""
    value = _BOOLS.get(text.lower())
    if value is None:
        raise Rejected(f"{what}: {text!r} is not one of ON, OFF, true, false, 1, 0")
    return value


def shown(payload: object) -> str:
    """The start of a payload as text, for logs and error notes."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload[:80]).decode("utf-8", "replace")
    return str(payload)[:80]


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as MQTT text: no trailing `.0`, `None` when unknown."""
    if value is None:
        return "None"
    r = round(float(value), digits)
    if r == int(r):
        return str(int(r))
    return repr(r)


def onoff(value: object) -> str:
    """ON or OFF."""
    return ON if value else OFF
