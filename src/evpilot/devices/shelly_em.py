"""Driver for a Shelly EM / EM1 / Pro 3EM energy meter over its Gen2 HTTP RPC."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from evpilot.core.site import Reading
from evpilot.devices.meter import Clock, MeterFault, MeterHealth, MeterReading
from evpilot.inputs import JsonError, read_json

log = logging.getLogger("evpilot.shelly_em")

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
    frequency: float | None = None


def _num(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ShellyEmProtocolError(f"field {key!r} is missing or not a number")
    return float(value)


def _opt(doc: dict[str, Any], key: str) -> float | None:
    return None if doc.get(key) is None else _num(doc, key)


def _signed(current: float, power: float) -> float:
    # Shelly meters report current as a magnitude; the active power's sign tells import from export.
    return -abs(current) if power < 0 else abs(current)


def parse_em(doc: object) -> EmReading:
    """An `EM.GetStatus` result (Pro 3EM: a_current, b_current, c_current, ...)."""
    if not isinstance(doc, dict):
        raise ShellyEmProtocolError("EM.GetStatus did not return an object")
    powers = tuple(_num(doc, f"{p}_act_power") for p in "abc")
    currents = tuple(_signed(_num(doc, f"{p}_current"), w) for p, w in zip("abc", powers, strict=True))
    voltages = tuple(_num(doc, f"{p}_voltage") for p in "abc")
    return EmReading("em", currents, voltages, powers, _opt(doc, "a_freq"))


def parse_em1(doc: object) -> EmReading:
    """An `EM1.GetStatus` result (Shelly EM gen2+: current, voltage, act_power)."""
    if not isinstance(doc, dict):
        raise ShellyEmProtocolError("EM1.GetStatus did not return an object")
    power = _num(doc, "act_power")
    current = _signed(_num(doc, "current"), power)
    return EmReading("em1", (current,), (_num(doc, "voltage"),), (power,), _opt(doc, "freq"))


def parse_energies(doc: object, kind: Kind) -> tuple[float, float]:
    """(import, export) kWh from `EMData.GetStatus` (total_act, total_act_ret) or `EM1Data.GetStatus`."""
    if not isinstance(doc, dict):
        raise ShellyEmProtocolError("the energy counters are not an object")
    if kind == "em":
        return _num(doc, "total_act") / 1000.0, _num(doc, "total_act_ret") / 1000.0
    return _num(doc, "total_act_energy") / 1000.0, _num(doc, "total_act_ret_energy") / 1000.0


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

    async def energies(self) -> tuple[float, float] | None:
        """(import, export) kWh after a `read`; None when the meter keeps no counters (HTTP 404)."""
        if self.kind is None:
            return None
        doc = await self._call("EMData.GetStatus" if self.kind == "em" else "EM1Data.GetStatus")
        return None if doc is None else parse_energies(doc, self.kind)


_FAULTS: dict[type[ShellyEmError], MeterFault] = {
    ShellyEmTimeout: MeterFault.TIMEOUT,
    ShellyEmUnreachable: MeterFault.UNREACHABLE,
    ShellyEmAuthError: MeterFault.AUTH,
    ShellyEmProtocolError: MeterFault.PROTOCOL,
}


class ShellyEmDriver:
    """A Shelly EM-family meter polled by its own task (a `MeterDriver`); the tick reads the cached values.

    A three-phase meter (Pro 3EM) gives L1-L3; a one-channel meter (EM1) gives its channel as L1 with
    `channels == 1`, for the wiring that knows which phase it measures.
    """

    driver = "shelly"

    def __init__(
        self,
        name: str,
        host: str,
        clock: Clock,
        port: int = 80,
        poll_s: float = 2.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.clock = clock
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.transport = transport
        self.kind: Kind | None = None
        self._meter: ShellyEmMeter | None = None
        self._full: MeterReading | None = None
        self._health = MeterHealth()
        self.channels = 0

    @property
    def model(self) -> str | None:
        """`em` (three phases) or `em1` (one channel), once the meter answered."""
        return self.kind

    @property
    def address(self) -> str:
        """Host and port of the meter."""
        return f"{self.host}:{self.port}"

    def latest(self) -> Reading | None:
        """The newest per-phase current reading (an EM1's channel as L1), or None."""
        return None if self._full is None else self._full.reading()

    def full(self) -> MeterReading | None:
        """The newest full reading, or None."""
        return self._full

    def health(self) -> MeterHealth:
        """Fault counters and whether the last poll succeeded."""
        return self._health

    async def poll(self) -> None:
        """Read the meter once; a fault is counted (and logged once per episode), never raised."""
        if self._meter is None:
            self._meter = ShellyEmMeter(self.host, self.port, self.timeout_s, transport=self.transport)
        try:
            em = await self._meter.read()
        except ShellyEmError as exc:
            fault = next((f for t, f in _FAULTS.items() if isinstance(exc, t)), MeterFault.PROTOCOL)
            if self._health.count(fault, str(exc)):
                log.warning("%s: Shelly EM %s: %s", self.name, self.address, exc)
            return
        currents = (*em.currents, 0.0, 0.0, 0.0)[:3]
        volts: tuple[float | None, ...] = (*em.voltages, None, None, None)[:3]
        powers: tuple[float | None, ...] = (*em.powers, None, None, None)[:3]
        self.channels = len(em.currents)
        self.kind = em.kind
        self._full = MeterReading(
            self.clock(),
            (currents[0], currents[1], currents[2]),
            (volts[0], volts[1], volts[2]),
            (powers[0], powers[1], powers[2]),
            power=sum(em.powers),
        )
        if self._health.ok():
            log.info("%s: Shelly EM %s answers again", self.name, self.address)

    async def run(self) -> None:
        """Poll every `poll_s` until cancelled."""
        try:
            while True:
                await self.poll()
                await asyncio.sleep(self.poll_s)
        finally:
            meter, self._meter = self._meter, None
            if meter is not None:
                await meter.close()
