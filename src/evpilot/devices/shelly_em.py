"""Driver for a Shelly EM / EM1 / Pro 3EM energy meter over its Gen2 HTTP RPC."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from evpilot.inputs import JsonError, read_json

# A meter on the LAN answers in well under a second; a longer wait only delays the fallback.
DEFAULT_TIMEOUT_S = 2.0
Kind = Literal["em", "em1"]


class ShellyEmError(Exception):
    """The meter could not be read."""


class ShellyEmTimeout(ShellyEmError):
    """The meter did not answer in time."""


class ShellyEmUnreachable(ShellyEmError):
    """No connection to the meter."""


class ShellyEmAuthError(ShellyEmError):
    """The meter asks for a password (HTTP 401)."""


class ShellyEmProtocolError(ShellyEmError):
    """The meter answered something that is not a meter reading."""


@dataclass(frozen=True, slots=True)
class EmReading:
    """Per-phase currents (A, + import, − export; one value for EM1), voltages (V), active power (W)."""

    kind: Kind
    currents: tuple[float, ...]
    voltages: tuple[float, ...]
    powers: tuple[float, ...]


def _num(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ShellyEmProtocolError(f"field {key!r} is missing or not a number")
    return float(value)


def _signed(current: float, power: float) -> float:
    # Shelly meters report current as a magnitude; the active power's sign tells import from export.
    return -abs(current) if power < 0 else abs(current)


def parse_em(doc: object) -> EmReading:
    """An `EM.GetStatus` result (Pro 3EM: a_current, b_current, c_current, ...)."""
    if not isinstance(doc, dict):
        raise ShellyEmProtocolError("EM.GetStatus did not return an object")
    powers = tuple(_num(doc, f"{p}_act_power") for p in "abc")
    currents = tuple(_signed(_num(doc, f"{p}_current"), w) for p, w in zip("abc", powers, strict=True))
    return EmReading("em", currents, tuple(_num(doc, f"{p}_voltage") for p in "abc"), powers)


def parse_em1(doc: object) -> EmReading:
    """An `EM1.GetStatus` result (Shelly EM gen2+: current, voltage, act_power)."""
    if not isinstance(doc, dict):
        raise ShellyEmProtocolError("EM1.GetStatus did not return an object")
    power = _num(doc, "act_power")
    return EmReading("em1", (_signed(_num(doc, "current"), power),), (_num(doc, "voltage"),), (power,))


class ShellyEmMeter:
    """Reads a Shelly EM-family meter; tries `EM.GetStatus` first and falls back to `EM1.GetStatus`."""

    def __init__(
        self,
        host: str,
        port: int = 80,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.channel = channel
        self.kind: Kind | None = None
        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    async def _call(self, method: str) -> object | None:
        """The result of one RPC; None when the meter has no handler for `method` (HTTP 404)."""
        try:
            resp = await self._client.get(f"/rpc/{method}", params={"id": str(self.channel)})
        except httpx.TimeoutException as exc:
            raise ShellyEmTimeout(f"{self.host}:{self.port}: no answer to {method}") from exc
        except httpx.HTTPError as exc:
            raise ShellyEmUnreachable(f"{self.host}:{self.port}: {exc.__class__.__name__}: {exc}") from exc
        if resp.status_code == 401:
            raise ShellyEmAuthError(f"{self.host}:{self.port}: the meter requires authentication")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ShellyEmProtocolError(f"{self.host}:{self.port}: {method} answered HTTP {resp.status_code}")
        try:
            doc: object = read_json(resp.content)
            return doc
        except JsonError as exc:
            raise ShellyEmProtocolError(f"{self.host}:{self.port}: {method} answered invalid JSON") from exc

    async def read(self) -> EmReading:
        """One reading; raises a ShellyEmError subclass when the meter cannot be read."""
        if self.kind in (None, "em"):
            doc = await self._call("EM.GetStatus")
            if doc is not None:
                self.kind = "em"
                return parse_em(doc)
            if self.kind == "em":
                raise ShellyEmProtocolError(f"{self.host}:{self.port}: EM.GetStatus disappeared")
        doc = await self._call("EM1.GetStatus")
        if doc is None:
            raise ShellyEmProtocolError(f"{self.host}:{self.port}: neither EM.GetStatus nor EM1.GetStatus")
        self.kind = "em1"
        return parse_em1(doc)
