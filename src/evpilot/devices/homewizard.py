"""HomeWizard P1 meter (and kWh meters) through the local API v1: `GET /api/v1/data`."""

from __future__ import annotations

import math
from typing import Any

import httpx

from evpilot.devices.meter import Clock, MeterFault, MeterReading
from evpilot.devices.polled import MeterError, PolledMeter
from evpilot.inputs import JsonError, read_json

PATH = "/api/v1/data"
_PHASES = ("l1", "l2", "l3")


def _num(doc: dict[str, Any], key: str) -> float | None:
    """A numeric field, None when the meter does not report it; anything else is a protocol fault."""
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MeterError(MeterFault.PROTOCOL, f"field {key!r} is not a number: {value!r}")
    return float(value)


def _signed(current: float, power: float | None) -> float:
    # Some firmware reports magnitudes: the phase's active power tells import (+) from export (−).
    if power is None or power == 0:
        return current
    return -abs(current) if power < 0 else abs(current)


def parse_data(doc: object, taken_at: float) -> MeterReading:
    """A `/api/v1/data` document as a reading; a single-phase meter reports only L1."""
    if not isinstance(doc, dict):
        raise MeterError(MeterFault.PROTOCOL, f"{PATH} did not return an object")
    currents: list[float] = []
    voltages: list[float | None] = []
    powers: list[float | None] = []
    for phase in _PHASES:
        amps = _num(doc, f"active_current_{phase}_a")
        watts = _num(doc, f"active_power_{phase}_w")
        volts = _num(doc, f"active_voltage_{phase}_v")
        if amps is None and watts is not None and volts:
            amps = watts / volts
        if amps is None:
            if phase == "l1":
                raise MeterError(MeterFault.PROTOCOL, "no active_current_l1_a (is this an energy meter?)")
            amps = 0.0
        elif math.isfinite(amps):
            amps = _signed(amps, watts)
        currents.append(amps)
        voltages.append(volts)
        powers.append(watts)
    return MeterReading(
        taken_at=taken_at,
        currents=(currents[0], currents[1], currents[2]),
        voltages=(voltages[0], voltages[1], voltages[2]),
        powers=(powers[0], powers[1], powers[2]),
        power=_num(doc, "active_power_w"),
        import_kwh=_num(doc, "total_power_import_kwh"),
        export_kwh=_num(doc, "total_power_export_kwh"),
        frequency=_num(doc, "active_frequency_hz"),
    )


class HomeWizardMeter(PolledMeter):
    """A HomeWizard meter polled over HTTP (the local API must be switched on in the Energy app)."""

    driver_type = "homewizard"

    def __init__(
        self,
        name: str,
        host: str,
        clock: Clock,
        port: int = 80,
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(name, clock, poll_s, timeout_s)
        self.host = host
        self.port = port
        self._model: str | None = None
        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}", timeout=httpx.Timeout(timeout_s), trust_env=False
        )

    @property
    def model(self) -> str | None:
        """The smart meter's model as the P1 telegram names it, once read."""
        return self._model

    @property
    def address(self) -> str:
        """`host:port`."""
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    async def fetch(self) -> MeterReading:
        """One `GET /api/v1/data`."""
        try:
            resp = await self._client.get(PATH)
        except httpx.TimeoutException:
            raise MeterError(MeterFault.TIMEOUT, f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise MeterError(MeterFault.UNREACHABLE, f"{exc.__class__.__name__}: {exc}") from None
        if resp.status_code in (401, 403):
            raise MeterError(MeterFault.AUTH, f"HTTP {resp.status_code}: is the local API switched on?")
        if resp.status_code != 200:
            raise MeterError(MeterFault.PROTOCOL, f"{PATH} answered HTTP {resp.status_code}")
        try:
            doc = read_json(resp.content)
        except JsonError as exc:
            raise MeterError(MeterFault.PROTOCOL, f"{PATH} answered invalid JSON: {exc}") from None
        reading = parse_data(doc, self.clock())
        if isinstance(doc, dict) and isinstance(doc.get("meter_model"), str):
            self._model = doc["meter_model"].strip() or None
        return reading
