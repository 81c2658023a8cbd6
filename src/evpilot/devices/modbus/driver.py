"""The Modbus meter driver: polls one meter through a shared bus and keeps its last valid reading."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evpilot.core.site import Reading
from evpilot.devices.meter import Clock, MeterFault, MeterHealth, MeterReading
from evpilot.devices.modbus import bus as buses
from evpilot.devices.modbus.bus import BusError, Endpoint, ModbusBus
from evpilot.devices.modbus.maps import lookup
from evpilot.devices.modbus.registers import (
    CURRENTS,
    POWERS,
    VOLTAGES,
    Quantity,
    RegisterMap,
    RegisterMapError,
)

log = logging.getLogger("evpilot.meters.modbus")

# Limits past which a value is a misread, not a measurement (the same for every meter driver).
MAX_CURRENT_A = 2000.0
MAX_VOLTAGE_V = 500.0
MAX_POWER_W = 3 * MAX_VOLTAGE_V * MAX_CURRENT_A
MAX_ENERGY_KWH = 1e9
FREQUENCY_HZ = (40.0, 70.0)
# An energy counter may step back by float rounding; past this it runs backwards.
ENERGY_SLACK_KWH = 0.001
# After this many polls in a row that agree on a lower counter, it is taken as a reset meter.
BACKWARDS_ACCEPT = 3
# After failed polls the next waits poll_s, then twice that, ... up to this: a dead meter on a shared
# RS485 line costs the others a timeout per poll.
POLL_BACKOFF_CAP_S = 10.0

PARITIES = ("N", "E", "O")


class SpecError(ValueError):
    """A `type: modbus` meter mapping is not valid; `key` names the field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class ModbusSpec:
    """A `type: modbus` meter from the config."""

    model: str
    host: str | None = None
    port: int = 502
    unit: int = 1
    serial: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    registers: Mapping[str, Any] | None = None
    poll_s: float = 1.0
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if (self.host is None) == (self.serial is None):
            raise SpecError("host", "give exactly one of host (Modbus TCP) or serial (Modbus RTU)")
        if self.host is not None and not self.host.strip():
            raise SpecError("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise SpecError("port", f"expected 1-65535, got {self.port}")
        if not 1 <= self.unit <= 247:
            raise SpecError("unit", f"expected a Modbus unit id 1-247, got {self.unit}")
        if self.baudrate not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
            raise SpecError("baudrate", f"expected a standard rate 1200-115200, got {self.baudrate}")
        if self.parity not in PARITIES:
            raise SpecError("parity", f"expected N, E or O, got {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise SpecError("stopbits", f"expected 1 or 2, got {self.stopbits}")
        if not (math.isfinite(self.poll_s) and 0.05 <= self.poll_s <= 3600):
            raise SpecError("poll_s", f"expected 0.05-3600 s, got {self.poll_s}")
        if not (math.isfinite(self.timeout_s) and 0.01 <= self.timeout_s <= 60):
            raise SpecError("timeout_s", f"expected 0.01-60 s, got {self.timeout_s}")
        if self.model == "custom" and self.registers is None:
            raise SpecError("registers", "model: custom needs a registers mapping")
        if self.model != "custom" and self.registers is not None:
            raise SpecError("registers", "only model: custom takes a registers mapping")

    @property
    def endpoint(self) -> Endpoint:
        """The bus this meter is on."""
        return Endpoint(self.host, self.port, self.serial, self.baudrate, self.parity, self.stopbits)

    def register_map(self) -> RegisterMap:
        """The model's table, or the config's own for `model: custom`."""
        if self.model == "custom":
            try:
                return RegisterMap.from_config(self.registers)
            except RegisterMapError as exc:
                raise SpecError("registers", str(exc).removeprefix("registers").lstrip(".: ")) from None
        try:
            return lookup(self.model)
        except KeyError as exc:
            raise SpecError("model", str(exc.args[0])) from None

    @classmethod
    def of(cls, model: object) -> ModbusSpec:
        """A spec from a config object with the same attribute names (None timeout_s: the default)."""
        doc: dict[str, Any] = {}
        for key in cls.__dataclass_fields__:
            value = getattr(model, key, None)
            if value is None:
                continue
            if key == "registers":
                value = {
                    str(k): (v.model_dump() if hasattr(v, "model_dump") else dict(v))
                    for k, v in value.items()
                }
            doc[key] = value
        return cls.from_mapping(doc)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> ModbusSpec:
        """A spec from a config mapping (`type` is ignored); SpecError names the bad field."""
        allowed = {f for f in cls.__dataclass_fields__} | {"type"}
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise SpecError(unknown[0], f"unknown key; expected one of {', '.join(sorted(allowed))}")
        if "model" not in doc:
            raise SpecError("model", "required (sdm630, abb_b23, ..., or custom)")
        kwargs: dict[str, Any] = {}
        for key, kind in (
            ("model", str),
            ("host", str),
            ("serial", str),
            ("parity", str),
            ("port", int),
            ("unit", int),
            ("baudrate", int),
            ("stopbits", int),
            ("poll_s", float),
            ("timeout_s", float),
        ):
            if key not in doc:
                continue
            value = doc[key]
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if isinstance(value, bool) or not ok:
                raise SpecError(
                    key, f"expected {'a number' if kind is float else kind.__name__}, got {value!r}"
                )
            kwargs[key] = float(value) if kind is float else value
        if "registers" in doc:
            if not isinstance(doc["registers"], Mapping):
                raise SpecError("registers", "expected a mapping of quantity → register")
            kwargs["registers"] = dict(doc["registers"])
        spec = cls(**kwargs)
        spec.register_map()
        return spec


def _finite(values: Mapping[Quantity, float]) -> str | None:
    bad = [q.value for q, v in values.items() if not math.isfinite(v)]
    return f"non-finite {', '.join(bad)}" if bad else None


def _absurd(values: Mapping[Quantity, float]) -> str | None:
    for q, v in values.items():
        if q in CURRENTS and abs(v) > MAX_CURRENT_A:
            return f"{q.value} {v:g} A"
        if q in VOLTAGES and not 0 <= v <= MAX_VOLTAGE_V:
            return f"{q.value} {v:g} V"
        if (q in POWERS or q is Quantity.POWER) and abs(v) > MAX_POWER_W:
            return f"{q.value} {v:g} W"
        if q in (Quantity.IMPORT_KWH, Quantity.EXPORT_KWH) and not 0 <= v <= MAX_ENERGY_KWH:
            return f"{q.value} {v:g} kWh"
        if q is Quantity.FREQUENCY and not FREQUENCY_HZ[0] <= v <= FREQUENCY_HZ[1]:
            return f"frequency {v:g} Hz"
    return None


def to_reading(regmap: RegisterMap, values: Mapping[Quantity, float], taken_at: float) -> MeterReading:
    """A MeterReading from decoded values; magnitudes get the sign of their phase's (or total) power."""
    total = values.get(Quantity.POWER)
    currents: list[float] = []
    for cq, pq in zip(CURRENTS, POWERS, strict=True):
        current = values.get(cq, 0.0)
        if not regmap.currents_signed:
            power = values.get(pq, total)
            current = -abs(current) if power is not None and power < 0 else abs(current)
        currents.append(current)
    powers = tuple(values.get(q) for q in POWERS)
    if total is None and any(p is not None for p in powers):
        total = sum(p for p in powers if p is not None)
    return MeterReading(
        taken_at=taken_at,
        currents=(currents[0], currents[1], currents[2]),
        voltages=(values.get(VOLTAGES[0]), values.get(VOLTAGES[1]), values.get(VOLTAGES[2])),
        powers=(powers[0], powers[1], powers[2]),
        power=total,
        import_kwh=values.get(Quantity.IMPORT_KWH),
        export_kwh=values.get(Quantity.EXPORT_KWH),
        frequency=values.get(Quantity.FREQUENCY),
    )


async def read_values(
    bus: ModbusBus, regmap: RegisterMap, unit: int, timeout: float
) -> dict[Quantity, float]:
    """Every quantity of `regmap` read from `unit` (raises BusError)."""
    raw = [(b, await bus.read(unit, b.function, b.address, b.count, timeout)) for b in regmap.blocks]
    return regmap.decode(raw)


class ModbusMeter:
    """A Modbus meter polled every `poll_s` by its own task (implements MeterDriver)."""

    def __init__(self, name: str, spec: ModbusSpec, clock: Clock, regmap: RegisterMap | None = None) -> None:
        self.name = name
        self.spec = spec
        self.map = regmap or spec.register_map()
        self._clock = clock
        self._health = MeterHealth()
        self._full: MeterReading | None = None
        self._energy: tuple[float | None, float | None] = (None, None)
        self._backwards = 0
        self._bus: ModbusBus | None = None
        self.failures = 0

    @property
    def driver(self) -> str:
        """The config `type`."""
        return "modbus"

    @property
    def model(self) -> str | None:
        """The register map's model name."""
        return self.map.model

    @property
    def address(self) -> str:
        """Where the meter is reached."""
        return f"{self.spec.endpoint} unit {self.spec.unit}"

    def latest(self) -> Reading | None:
        """The newest valid per-phase current reading."""
        return self._full.reading() if self._full is not None else None

    def full(self) -> MeterReading | None:
        """The newest valid full reading."""
        return self._full

    def health(self) -> MeterHealth:
        """Fault counters and link state."""
        return self._health

    def _fault(self, fault: MeterFault, message: str) -> None:
        self.failures += 1
        if self._health.count(fault, message):
            log.warning("meter %s (%s): %s: %s", self.name, self.address, fault.value, message)

    def next_delay(self) -> float:
        """Seconds from one poll's start to the next: poll_s, doubled per failure in a row up to the cap."""
        if self.failures == 0:
            return self.spec.poll_s
        return min(max(POLL_BACKOFF_CAP_S, self.spec.poll_s), self.spec.poll_s * 2.0 ** (self.failures - 1))

    def _check_energy(self, values: dict[Quantity, float]) -> str | None:
        pairs = ((Quantity.IMPORT_KWH, self._energy[0]), (Quantity.EXPORT_KWH, self._energy[1]))
        for q, before in pairs:
            now = values.get(q)
            if now is None or before is None:
                continue
            if now < before - ENERGY_SLACK_KWH - 1e-7 * before:
                return f"{q.value} went from {before:.3f} to {now:.3f} kWh"
        return None

    async def poll_once(self) -> MeterReading | None:
        """One poll: the new valid reading, or None (the fault is counted and logged once per episode)."""
        if self._bus is None:
            raise RuntimeError("poll_once needs the bus: call it inside run() or use `async with`")
        try:
            values = await read_values(self._bus, self.map, self.spec.unit, self.spec.timeout_s)
        except BusError as exc:
            self._fault(exc.fault, str(exc))
            return None
        problem = _finite(values)
        if problem:
            self._fault(MeterFault.NON_FINITE, problem)
            return None
        problem = _absurd(values)
        if problem:
            self._fault(MeterFault.ABSURD, problem)
            return None
        problem = self._check_energy(values)
        if problem:
            self._backwards += 1
            if self._backwards < BACKWARDS_ACCEPT:
                self._fault(MeterFault.BACKWARDS, problem)
                return None
            log.warning("meter %s: energy counter restarted (%s); taking the new value", self.name, problem)
        self._backwards = 0
        self.failures = 0
        self._energy = (values.get(Quantity.IMPORT_KWH), values.get(Quantity.EXPORT_KWH))
        reading = to_reading(self.map, values, self._clock())
        self._full = reading
        if self._health.ok():
            log.info("meter %s (%s): readings again", self.name, self.address)
        return reading

    async def __aenter__(self) -> ModbusMeter:
        self._bus = buses.acquire(self.spec.endpoint)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            buses.release(self._bus)
            self._bus = None

    async def run(self) -> None:
        """Poll until cancelled; device faults are counted, never raised."""
        async with self:
            # Meters started together would poll in one burst every period; a stable offset per meter
            # spreads them over the period so the control tick never waits behind a burst.
            offset = zlib.crc32(f"{self.name} {self.address}".encode()) % 1000 / 1000
            await asyncio.sleep(offset * self.spec.poll_s)
            while True:
                started = time.monotonic()
                await self.poll_once()
                await asyncio.sleep(max(0.0, self.next_delay() - (time.monotonic() - started)))


def build(name: str, spec: ModbusSpec | object, clock: Clock) -> ModbusMeter:
    """The driver for a `type: modbus` meter (the registry's factory): a ModbusSpec or a config model."""
    return ModbusMeter(name, spec if isinstance(spec, ModbusSpec) else ModbusSpec.of(spec), clock)
